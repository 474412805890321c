//! Wiring: builds the pieces from the config and runs `proxy`, `join`, `run` and `demo`.
