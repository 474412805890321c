//! The review pipeline behind the proxy's hook: decide, count, build and send the record.
