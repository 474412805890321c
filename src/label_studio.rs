//! The Label Studio bridge (`reviewloop label-studio`): teams that label in Label Studio
//! review production traffic there. Review records become tasks with the model's answer as
//! a prediction; every annotation comes back as an answer on the completed topic, which the
//! joiner consolidates as any reviewer's.
//!
//! # Design
//!
//! **Reviews → tasks, at least once, one task per record.** The bridge is a consumer group
//! member on the review topic. A record's offset is stored only once Label Studio took its
//! task; a record read again (a rebalance, a crash before the commit) is looked up by
//! reviewloop's id in the task data (`data.reviewloop_id`) first and not imported twice.
//!
//! **Annotations → answers, published once.** Label Studio calls the webhook once, with a
//! 1 s timeout, and never again; so a catch-up reads, every `poll_interval`, the tasks
//! changed since its cursor with their annotations. Both paths go through one worker, which
//! publishes an annotation, waits for the broker's ack, then records it in the task's meta
//! (`meta.reviewloop_published`, the ledger): a restarted bridge, or the catch-up after the
//! webhook, finds it there and does not publish it again. The one gap — a crash between the
//! ack and the ledger write — publishes that answer a second time, and the joiner drops it
//! (it counts one answer per reviewer per item). An updated annotation is not published
//! again (the joiner keeps a reviewer's first answer); a deleted one leaves its answer on
//! the topic.
//!
//! # Layout
//!
//! - [`config`]: the `[label_studio]` section, the token and the shared secret.
//! - [`labeling`]: the kind of answer a route asks for and the labeling config derived from
//!   the console's settings (pure).
//! - [`task`]: a review record as a task: data, meta, the model's prediction (pure).
//! - [`answer`]: an annotation as a completed record (pure).
//! - [`ledger`]: which annotations were handled, kept in the task's meta (pure).
//! - [`api`]: Label Studio's REST API.
//! - [`bridge`]: the import loop, the answer worker and its catch-up.
//! - [`webhook`]: the webhook endpoint.
//! - [`metrics`]: the bridge's Prometheus metrics.

pub mod answer;
pub mod api;
mod bridge;
pub mod config;
pub mod labeling;
pub mod ledger;
mod metrics;
pub mod task;
mod webhook;

pub use self::config::{LabelStudioConfig, ProjectRef, Secret};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use self::api::{Api, ApiError, Project};
use self::labeling::Kind;
use crate::console::ConsoleConfig;
use crate::kafka::{KafkaConfig, KafkaError};
use crate::metrics::Metrics;

/// Webhook annotations waiting for the worker; beyond this the catch-up finds them.
const WEBHOOK_QUEUE: usize = 1024;
/// How long to wait between tries to reach Label Studio at start.
const CONNECT_RETRY: Duration = Duration::from_secs(2);

/// Why the bridge could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("label_studio: {0}")]
    Config(String),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("cannot register the bridge's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("the webhook listener failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What the bridge reads of the configuration: its section, the console's (labels and
/// template of the derived labeling config), the topics, and how far back answers matter.
#[derive(Debug, Clone, Copy)]
pub struct Sections<'a> {
    pub label_studio: &'a LabelStudioConfig,
    pub console: &'a ConsoleConfig,
    pub kafka: &'a KafkaConfig,
    /// `join.review_timeout`: the catch-up's first look goes back this far.
    pub review_timeout: Duration,
    /// `join.reviewers_per_item`: a created project's overlap (annotators per task).
    pub reviewers_per_item: u32,
}

/// Runs the bridge until `shutdown`: finds or creates the project, registers the webhook
/// (served on `listener`), then imports reviews and publishes answers. `ready` turns true
/// once Label Studio answered and follows its health.
pub async fn run(
    sections: Sections<'_>,
    bootstrap: &str,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    ready: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BridgeError> {
    let config = sections.label_studio;
    if !config.is_configured() {
        return Err(BridgeError::Config(
            "url is not set: the bridge needs a Label Studio".into(),
        ));
    }
    let bridge_metrics = Arc::new(metrics::BridgeMetrics::register(&metrics)?);
    let token = config.token().map_err(BridgeError::Config)?;
    let secret = match config.secret().map_err(BridgeError::Config)? {
        Some(secret) => secret,
        None => Secret::new(random_secret()),
    };
    let header = http::HeaderName::from_bytes(config.secret_header.as_bytes())
        .map_err(|e| BridgeError::Config(format!("secret_header: {e}")))?;
    let api = Arc::new(Api::new(&config.url, &token, config.request_timeout).map_err(BridgeError::Config)?);
    let webhook_url = if config.webhook_url.is_empty() {
        format!("http://{}{}", listener.local_addr()?, webhook::PATH)
    } else {
        config.webhook_url.clone()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (events_tx, events_rx) = mpsc::channel(WEBHOOK_QUEUE);
    let hook = Arc::new(webhook::Webhook {
        header,
        secret: secret.clone(),
        events: events_tx,
        metrics: bridge_metrics.clone(),
    });
    let server = {
        let mut stop = stop_rx.clone();
        webhook::serve(listener, hook, async move {
            bridge::stopped(&mut stop).await;
        })
    };
    let work = async {
        let mut stop = stop_rx.clone();
        let started = tokio::select! {
            started = start(sections, &api, &webhook_url, &config.secret_header, &secret, &bridge_metrics) => started?,
            () = bridge::stopped(&mut stop) => return Ok(()),
        };
        let (project, kind) = started;
        info!(
            url = %api.base(),
            project = project.id,
            title = %project.title,
            webhook = %webhook_url,
            "Label Studio bridge started"
        );
        ready.store(true, std::sync::atomic::Ordering::Release);
        let context = bridge::Context {
            api: api.clone(),
            project,
            kind,
            route: config.route.clone(),
            metrics: bridge_metrics.clone(),
            healthy: ready.clone(),
        };
        let publisher = crate::kafka::AnswerPublisher::new(sections.kafka, bootstrap, "reviewloop-label-studio")?;
        let answers = bridge::Answers::new(&context, publisher, sections.review_timeout);
        let imports = bridge::import_reviews(
            &context,
            sections.kafka,
            bootstrap,
            &config.group_id,
            stop_rx.clone(),
        );
        let (imported, ()) = tokio::join!(
            imports,
            answers.run(events_rx, config.poll_interval, stop_rx.clone())
        );
        imported?;
        Ok::<_, BridgeError>(())
    };
    let watched = async {
        // A bridge that cannot start stops its webhook server too.
        let result = work.await;
        let _ = stop_tx.send(true);
        result
    };
    let both = async { tokio::join!(watched, server) };
    tokio::pin!(both, shutdown);
    let (worked, served) = tokio::select! {
        results = &mut both => results,
        () = &mut shutdown => {
            let _ = stop_tx.send(true);
            both.await
        }
    };
    worked?;
    served?;
    info!("Label Studio bridge stopped");
    Ok(())
}

/// Reaches Label Studio (retrying until it answers; a refused token is final), finds or
/// creates the project, registers the webhook. Returns the project and the kind of its
/// predictions.
async fn start(
    sections: Sections<'_>,
    api: &Api,
    webhook_url: &str,
    header: &str,
    secret: &Secret,
    metrics: &metrics::BridgeMetrics,
) -> Result<(Project, Option<(Kind, Vec<String>)>), BridgeError> {
    let config = sections.label_studio;
    let derived = labeling::route_kind(sections.console, &config.route);
    let mut warned = false;
    loop {
        let attempt = async {
            api.whoami().await?;
            let project = match &config.project {
                ProjectRef::Id(id) => api.project(*id).await?,
                ProjectRef::Title(title) => match api.find_project(title).await? {
                    Some(project) => project,
                    None => {
                        let label_config = if config.label_config.trim().is_empty() {
                            let (kind, labels) = derived.clone().map_err(BridgeError::Config)?;
                            let instructions = sections.console.route(&config.route).instructions;
                            labeling::label_config(kind, &labels, instructions)
                        } else {
                            config.label_config.clone()
                        };
                        let project = api
                            .create_project(title, &label_config, sections.reviewers_per_item)
                            .await?;
                        info!(project = project.id, %title, "created the Label Studio project");
                        project
                    }
                },
            };
            api.ensure_webhook(project.id, webhook_url, header, secret).await?;
            Ok::<_, BridgeError>(project)
        };
        match attempt.await {
            Ok(project) => {
                let kind = predictions_kind(&project.label_config, derived.ok());
                return Ok((project, kind));
            }
            // A refused token, a missing project, a rejected labeling config: final.
            Err(BridgeError::Api(e)) if e.is_transient() => {
                metrics.api_error(e.kind());
                if !warned {
                    warn!(error = %e, "cannot reach Label Studio yet; retrying");
                    warned = true;
                }
                tokio::time::sleep(CONNECT_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The predictions a project can show: the derived kind when its labeling config has that
/// control (with the labels it offers), else none.
fn predictions_kind(
    label_config: &str,
    derived: Option<(Kind, Vec<String>)>,
) -> Option<(Kind, Vec<String>)> {
    let (kind, labels) = derived?;
    let control = format!("name=\"{}\"", kind.control());
    label_config.contains(&control).then_some((kind, labels))
}

/// A fresh shared secret: 32 random bytes, hex.
fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}
