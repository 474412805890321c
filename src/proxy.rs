//! The data plane: accepts clients (HTTP/1.1 and h2c), forwards to the upstream, streams the
//! response back unchanged while capturing it for the review hook, and maps failures to answers.
