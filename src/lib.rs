//! reviewloop: a streaming sidecar that sends the predictions that matter to human review and
//! joins the answers back into retraining data.
//!
//! # Layout
//!
//! Data flows one way: config → proxy → decision → record → kafka; and kafka → join → kafka.
//!
//! - [`config`]: the TOML file, environment overlay, defaults and validation.
//! - [`telemetry`]: tracing setup (text or JSON logs, `RUST_LOG`).
//! - [`metrics`]: the Prometheus metrics, on one registry.
//! - [`admin`]: the admin server (`/metrics`, `/healthz`, `/readyz`).
//! - [`route`]: matching request paths to routes and bounded labels.
//! - [`upstream`]: calling the model (an HTTP server or a SageMaker endpoint).
//! - [`proxy`]: the data plane: forwarding, body capture, error answers, shutdown.
//! - [`exchange`]: what the proxy hands to the review pipeline, and the hook trait.
//! - [`confidence`]: reading a confidence from any model's response (pure).
//! - [`conditions`]: A2I activation conditions (pure).
//! - [`decision`]: the review decision: conditions, sampling, budget, override (pure).
//! - [`record`]: the Kafka records' shapes and body encodings.
//! - [`kafka`]: client configuration, the embedded broker, CloudEvents headers.
//! - [`review`]: the pipeline behind the hook: decide, count, build and send the record.
//! - [`join`]: the exactly-once joiner of answers into retraining records.
//! - [`console`]: the reviewer console: people answer reviews in a browser.
//! - [`demo`]: the whole loop in one process, with a model that learns.
//! - [`app`]: wiring the pieces into `proxy`, `join`, `run` and `demo`.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod conditions;
pub mod confidence;
pub mod config;
pub mod console;
pub mod decision;
pub mod demo;
pub mod exchange;
pub mod join;
pub mod kafka;
pub mod metrics;
pub mod proxy;
pub mod record;
pub mod review;
pub mod route;
pub mod telemetry;
pub mod upstream;
