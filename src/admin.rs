//! The admin server: `/metrics`, `/healthz`, `/readyz`, never on the data port.
