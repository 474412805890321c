//! The review decision: conditions, sampling, budget and the per-request override.
