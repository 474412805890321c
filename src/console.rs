//! The reviewer console (`reviewloop console`): a web application that serves open reviews to
//! people and publishes their answers to the completed topic, closing the loop without a
//! line of reviewer code.
//!
//! # Design
//!
//! **The queue is a function of the topics.** Each console reads every partition of the
//! review and completed topics from the beginning ([`feed`]) into a pure work queue
//! ([`queue`]): an item is open until `join.reviewers_per_item` distinct reviewers answered it
//! or `join.review_timeout` passed since its review record. Nothing is committed and nothing
//! else is stored, so a restarted console rebuilds the same queue: it loses no open item and
//! shows no answered one. Pages wait (a self-refreshing "loading" page) until both topics are
//! read to where they ended at start. The console holds each open item's review record in
//! memory, as the bytes it was on the topic.
//!
//! **Leases are per process.** Showing an item leases it to the reviewer for
//! `console.task_time_limit` (A2I's TaskTimeLimitInSeconds); a lease that runs out returns the
//! item to the queue. Several instances each read everything, so each sees every answer within
//! a fetch (≈100 ms), but their leases are their own: two instances can show the same item to
//! two reviewers at once. The first answers count; the joiner counts a reviewer once and
//! ignores answers to a finished item, so retraining stays exact and only the overlap is
//! wasted work. Sessions and CSRF keys are per process too: behind a load balancer, several
//! instances need session affinity.
//!
//! **An answer is confirmed only after the broker's ack.** A submission is checked by its
//! template, taken by the queue once (a double submit is refused while the first is in
//! flight, and after it), published keyed by id with the producer's default partitioner (the
//! review topic's, so the joiner finds it), and the reviewer sees "saved" only once the broker
//! acknowledged it.
//!
//! **Inputs are attacker-controlled.** Pages are rendered by maud, which escapes every
//! interpolated string; the Content-Security-Policy allows scripts and styles from the
//! console alone and no inline code; every POST needs the identity, a CSRF token and a
//! same-origin `Sec-Fetch-Site`.
//!
//! # Layout
//!
//! - [`config`]: the `[console]` section and its checks.
//! - [`queue`]: the work queue (pure).
//! - [`feed`]: the Kafka side: rebuilding and following the topics, publishing answers.
//! - [`auth`]: identities (header, tokens, none), sessions, CSRF tokens.
//! - [`prediction`] (shared with the joiner): the model's labels, text and JSON as the task
//!   page shows them (pure).
//! - [`templates`]: one renderer per kind of task (classify, text, json, boxes, document,
//!   entities, translation) and the `auto` choice between them.
//! - [`media`]: the image or audio of an input, found in the record and served from it.
//! - [`tabular`]: a request that is one row of features, as a feature/value table (pure).
//! - [`pages`]: the HTML pages; `assets/` the script and the style sheet.
//! - [`server`]: the HTTP routes, identity and CSRF checks, security headers.
//! - [`task`]: the task flow: the next item, an answer taken once, published, acknowledged.
//! - [`metrics`]: the console's Prometheus metrics.

mod auth;
pub mod config;
mod feed;
mod media;
mod metrics;
mod pages;
mod queue;
mod server;
mod tabular;
mod task;
mod templates;

pub use self::config::{AuthMode, ConsoleConfig, TemplateKind};
#[cfg(feature = "test-util")]
pub use self::config::RouteSettings;
#[cfg(feature = "test-util")]
pub use self::server::CONTENT_SECURITY_POLICY;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::info;

use crate::join::JoinConfig;
use crate::prediction;
use crate::kafka::{KafkaConfig, KafkaError};
use crate::metrics::Metrics;

/// Why the console could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("console authentication: {0}")]
    Auth(String),
    #[error("cannot register the console's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the console's listener failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the console reads of the configuration: its own section, the joiner's rules (how many
/// answers an item needs, how long it waits), the topics, and the shutdown grace.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub console: &'a ConsoleConfig,
    pub join: &'a JoinConfig,
    pub kafka: &'a KafkaConfig,
    pub shutdown_grace: Duration,
}

/// Runs the console on `listener` until `shutdown`: follows the topics at `bootstrap`, serves
/// reviewers and publishes their answers; then lets open requests (answers waiting for their
/// ack included) finish within the shutdown grace.
pub async fn run(
    config: Sections<'_>,
    bootstrap: &str,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ConsoleError> {
    let console_metrics = Arc::new(metrics::ConsoleMetrics::register(&metrics)?);
    let auth = auth::Auth::new(config.console).map_err(ConsoleError::Auth)?;
    let rules = queue::Rules {
        reviewers_per_item: config.join.reviewers_per_item.max(1) as usize,
        task_time_limit: config.console.task_time_limit,
        review_timeout: config.join.review_timeout,
    };
    let shared = Arc::new(feed::Shared::new(queue::Queue::new(rules)));
    let publisher = crate::kafka::AnswerPublisher::new(config.kafka, bootstrap, "reviewloop-console")?;
    let state = Arc::new(server::State {
        config: config.console.clone(),
        auth,
        shared: shared.clone(),
        publisher,
        metrics: console_metrics.clone(),
        policy: server::content_security_policy(config.console),
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let feed = async {
        let fed = feed::follow(config.kafka, bootstrap, shared, console_metrics, async {
            let _ = stop_rx.await;
        })
        .await;
        // A feed that cannot read Kafka stops the server too: a console without its queue
        // would only ever say "loading".
        let _ = failed_tx.send(());
        fed
    };
    let web = async {
        let stop = async {
            tokio::pin!(shutdown);
            tokio::select! {
                () = &mut shutdown => {}
                _ = failed_rx => {}
            }
        };
        let served = server::serve(listener, state, config.shutdown_grace, stop).await;
        let _ = stop_tx.send(());
        served
    };
    let (fed, served) = tokio::join!(feed, web);
    fed?;
    served?;
    info!("console stopped");
    Ok(())
}
