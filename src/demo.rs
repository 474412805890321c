//! `reviewloop demo`: the whole loop in one process.
