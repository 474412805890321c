//! reviewloop: a streaming sidecar that sends the predictions that matter to human review and
//! joins the answers back into retraining data.
//!
//! # Layout
//!
//! Data flows one way: a request through proxy → route's policy (confidence, conditions) →
//! review record → Kafka; answers through Kafka → join state → Kafka. `config` reads the file
//! and checks it by calling each component's own checks and constructors; `app` wires the
//! components into processes. Each component owns its configuration section and its types;
//! no module imports from a module that imports from it.
//!
//! The product's facade, used by the binary, the tests and the benchmarks:
//! - [`app`]: one `App` per process — build (listeners, Kafka, components), spawn, stop in
//!   order within the grace — for `proxy`, `join`, `run` and `demo`.
//! - [`config`]: the TOML file, the environment overlay, the all-problems report, and the
//!   [`config::Checked`] configuration with what the checks compiled.
//! - [`metrics`]: the Prometheus metrics on one registry, and the typed reasons and outcomes
//!   they are labelled with.
//! - [`record`]: the Kafka records' shapes and body encodings.
//! - [`upstream`]: calling the model (an HTTP server through per-thread keep-alive connections,
//!   or a SageMaker endpoint).
//! - [`telemetry`]: tracing setup (text or JSON logs, `RUST_LOG`).
//! - [`demo`]: the whole loop in one process, with a model that learns.
//!
//! Inside (public only with the `test-util` feature, for tests and benchmarks):
//! - `settings`: durations and the problem report every section uses (a leaf).
//! - `proxy`: the data plane — `[server]`, accepting, forwarding, body capture, error answers;
//!   its serving threads (thread-per-core or one multi-thread runtime).
//! - `route`: request paths to routes; each route carries its bounded label and its policy.
//! - `exchange`: what the proxy hands to the review pipeline, and the hook trait.
//! - `ids`: new UUIDv7 ids (record ids, CloudEvent ids) from per-thread state, lock-free.
//! - `confidence`: `[confidence]`, reading one confidence from any model's response (pure).
//! - `conditions`: A2I activation conditions (pure).
//! - `decision`: `[review]`, one route's compiled policy: conditions, sampling, budget,
//!   override, and the sketch of recent confidences behind `target_rate` (pure apart from the
//!   budget's and the sketch's state; the clock is passed in).
//! - `redact`: `[redact]`, per route: fields dropped, masked or hashed and detectors (emails,
//!   cards…) run over the record's bodies before it leaves the proxy; fails closed.
//! - `review`: the pipeline behind the hook: decide, count, build, redact and send the record.
//! - `kafka`: `[kafka]`, client settings, the embedded broker, CloudEvents headers, topic
//!   checks, the review sink and its disk spool, the answer publisher of reviewer front ends.
//! - `join`: `[join]`, the exactly-once joiner of answers into retraining records.
//! - `console`: `[console]`, the reviewer console: a work queue rebuilt from the review and
//!   completed topics, sign-in, task pages per template, answers published to Kafka.
//! - `prediction`: the model's answer in a response — its labels with scores, its top label,
//!   its text (pure; the console shows it, the decision and the joiner compare with it).
//! - `label_studio`: `[label_studio]`, the Label Studio bridge: review records imported as
//!   tasks with the model's prediction, annotations published as answers (webhook and
//!   catch-up).
//! - `admin`: the admin server (`/metrics`, `/healthz`, `/readyz`).

#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod record;
pub mod telemetry;
pub mod upstream;

/// Declares modules that are the crate's own business: public only with the `test-util`
/// feature, so the compiler sees dead code in a normal build.
macro_rules! internal {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "test-util")]
        pub mod $name;
        #[cfg(not(feature = "test-util"))]
        mod $name;
    )*};
}

internal!(
    admin,
    conditions,
    confidence,
    console,
    decision,
    exchange,
    ids,
    join,
    kafka,
    label_studio,
    prediction,
    proxy,
    redact,
    review,
    route,
    settings,
);
