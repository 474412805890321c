//! The review joiner: answers from the completed topic joined into retraining records.
