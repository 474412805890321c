//! The bridge's two loops. Reviews → tasks: a consumer group member reading the review topic,
//! importing each record that has no task yet, storing its offset only once Label Studio took
//! it. Annotations → answers: one worker taking the webhook's annotations and, every
//! `poll_interval`, the tasks changed since its cursor, publishing each annotation once
//! (the ledger in the task's meta says which were) and waiting for the broker's ack.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use super::answer::{Annotation, NoAnswer, completed};
use super::api::{Api, ApiError, Project};
use super::labeling::Kind;
use super::ledger::{self, Step};
use super::metrics::{BridgeMetrics, Skip, Source};
use super::task;
use crate::join::answer::parse_review;
use crate::kafka::{AnswerPublisher, KafkaConfig, KafkaError, client_config};
use crate::record::rfc3339_millis;

/// The catch-up reads again what changed this long before its cursor: a transaction that
/// committed late is not missed (the ledger makes a second look harmless).
const CATCH_UP_OVERLAP: Duration = Duration::from_secs(60);
/// API failures are logged at most this often per loop.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// The longest wait between two tries of a failing import.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Annotations handled by this process that are remembered to skip the ledger look-up.
const MAX_REMEMBERED: usize = 100_000;

/// What both loops share.
pub struct Context {
    pub api: Arc<Api>,
    pub project: Project,
    /// The kind and labels of predictions; `None`: tasks carry no prediction.
    pub kind: Option<(Kind, Vec<String>)>,
    /// Only this route's records become tasks; empty: every route.
    pub route: String,
    pub metrics: Arc<BridgeMetrics>,
    /// The last Label Studio call succeeded (the process's readiness follows it).
    pub healthy: Arc<AtomicBool>,
}

impl Context {
    fn api_failed(&self, error: &ApiError, what: &str, warned: &mut Option<Instant>) {
        self.metrics.api_error(error.kind());
        self.healthy.store(false, Ordering::Release);
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            warn!(error = %error, "{what} failed; retrying");
            *warned = Some(Instant::now());
        }
    }

    fn api_ok(&self) {
        self.healthy.store(true, Ordering::Release);
    }
}

/// Reviews → tasks until `stop` turns true.
pub async fn import_reviews(
    context: &Context,
    kafka: &KafkaConfig,
    bootstrap: &str,
    group_id: &str,
    mut stop: watch::Receiver<bool>,
) -> Result<(), KafkaError> {
    let consumer: StreamConsumer = client_config(
        kafka,
        bootstrap,
        &[
            ("client.id", "reviewloop-label-studio"),
            ("auto.offset.reset", "earliest"),
            ("isolation.level", "read_committed"),
        ],
    )
    .set("group.id", group_id)
    // Offsets are stored by hand once a record's task exists; librdkafka commits them.
    .set("enable.auto.commit", "true")
    .set("enable.auto.offset.store", "false")
    .create()
    .map_err(|e| KafkaError::Config(format!("cannot create the bridge's consumer: {e}")))?;
    consumer.subscribe(&[kafka.review_topic.as_str()])?;
    info!(topic = %kafka.review_topic, group = group_id, "importing review records into Label Studio");
    let mut warned = None;
    loop {
        let message = tokio::select! {
            received = consumer.recv() => received,
            () = stopped(&mut stop) => break,
        };
        match message {
            Ok(message) => {
                if !import_one(context, &message, &mut stop, &mut warned).await {
                    break;
                }
                consumer.store_offset_from_message(&message)?;
            }
            Err(e) => {
                if warned.is_none_or(|at: Instant| at.elapsed() >= WARN_EVERY) {
                    warn!(error = %e, "reading the review topic failed; retrying");
                    warned = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // The stored offsets, now (not at the next auto-commit).
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::types::RDKafkaErrorCode::NoOffset,
        )) => {}
        Err(e) => warn!(error = %e, "committing the review topic's offsets at shutdown failed"),
    }
    Ok(())
}

/// One review record into a task (or not, with the reason counted). Retries Label Studio
/// until it answers; `false` when stopped first (the offset is then not stored).
async fn import_one(
    context: &Context,
    message: &BorrowedMessage<'_>,
    stop: &mut watch::Receiver<bool>,
    warned: &mut Option<Instant>,
) -> bool {
    let record = match parse_review(message.payload().unwrap_or_default()) {
        Ok(record) => record,
        Err(invalid) => {
            context.metrics.skipped(Skip::InvalidRecord);
            debug!(partition = message.partition(), offset = message.offset(), detail = %invalid.detail, "unreadable review record skipped");
            return true;
        }
    };
    if !context.route.is_empty() && record.route != context.route {
        context.metrics.skipped(Skip::OtherRoute);
        return true;
    }
    let task = match &context.kind {
        Some((kind, labels)) => task::task(&record, *kind, labels),
        None => {
            let mut task = task::task(&record, Kind::Classify, &[]);
            if let Some(object) = task.as_object_mut() {
                object.remove("predictions");
            }
            task
        }
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = async {
            // A redelivered record (a rebalance, a crash before the commit) has its task.
            if context.api.find_task(context.project.id, &record.id).await?.is_some() {
                return Ok(None);
            }
            context
                .api
                .import(context.project.id, std::slice::from_ref(&task))
                .await
                .map(Some)
        };
        match attempt.await {
            Ok(None) => {
                context.api_ok();
                context.metrics.skipped(Skip::AlreadyImported);
                return true;
            }
            Ok(Some(created)) => {
                context.api_ok();
                context.metrics.imported(created);
                debug!(id = %record.id, "task imported");
                return true;
            }
            Err(e) => context.api_failed(&e, "importing a review record into Label Studio", warned),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stopped(stop) => return false,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}


/// Annotations → answers: the worker.
pub struct Answers<'a> {
    context: &'a Context,
    publisher: AnswerPublisher,
    /// The catch-up's cursor: the newest task change it has handled (Label Studio's clock).
    cursor: SystemTime,
    emails: HashMap<u64, String>,
    /// (annotation id, updated_at) handled by this process.
    handled: HashSet<(u64, String)>,
    warned: Option<Instant>,
}

/// Why an annotation's handling stopped short; it is tried again by the next catch-up.
struct Again;

impl<'a> Answers<'a> {
    /// The catch-up starts `lookback` ago (answers older than `join.review_timeout` would be
    /// dead letters anyway).
    pub fn new(context: &'a Context, publisher: AnswerPublisher, lookback: Duration) -> Answers<'a> {
        Answers {
            context,
            publisher,
            cursor: SystemTime::now()
                .checked_sub(lookback)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            emails: HashMap::new(),
            handled: HashSet::new(),
            warned: None,
        }
    }

    /// Runs until `stop`: webhook annotations as they come, a catch-up every `interval`
    /// (the first one at once).
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<Annotation>,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(annotation) = events.recv() => self.webhook_annotation(annotation).await,
                _ = ticker.tick() => self.catch_up().await,
                () = stopped(&mut stop) => return,
            }
        }
    }

    async fn webhook_annotation(&mut self, annotation: Annotation) {
        debug!(annotation = annotation.id, task = annotation.task, "annotation from the webhook");
        let key = (
            annotation.id,
            annotation.updated_at.clone().unwrap_or_default(),
        );
        if self.handled.contains(&key) {
            return;
        }
        let mut task = match self.context.api.task(annotation.task).await {
            Ok(task) => task,
            Err(e) => {
                self.context
                    .api_failed(&e, "reading an annotated task", &mut self.warned);
                return;
            }
        };
        let _ = self.handle(&annotation, &mut task, Source::Webhook).await;
    }

    /// Reads the tasks changed since the cursor, oldest first, and handles their annotations;
    /// the cursor moves past each task fully handled.
    async fn catch_up(&mut self) {
        let mut since = self
            .cursor
            .checked_sub(CATCH_UP_OVERLAP)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut page = 1;
        loop {
            let since_text = rfc3339_millis(since);
            let (tasks, more) = match self
                .context
                .api
                .tasks_updated_since(self.context.project.id, &since_text, page)
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    self.context
                        .api_failed(&e, "reading changed tasks", &mut self.warned);
                    return;
                }
            };
            self.context.api_ok();
            debug!(since = %since_text, page, tasks = tasks.len(), more, "catch-up read changed tasks");
            let mut newest = since;
            for mut task in tasks {
                let annotations = task
                    .get("annotations")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for value in &annotations {
                    match Annotation::from_json(value) {
                        Ok(annotation) => {
                            if self.handle(&annotation, &mut task, Source::CatchUp).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => self.context.metrics.skipped(Skip::Unreadable),
                    }
                }
                if let Some(updated) = task
                    .get("updated_at")
                    .and_then(Value::as_str)
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                {
                    newest = newest.max(updated);
                    self.cursor = self.cursor.max(updated);
                }
            }
            if !more {
                return;
            }
            // Read from the newest change on; by page only when a page's changes all share
            // one time.
            if newest > since {
                since = newest;
                page = 1;
            } else {
                page += 1;
            }
        }
    }

    /// One annotation of `task` (its data and meta; the meta is updated in place).
    async fn handle(
        &mut self,
        annotation: &Annotation,
        task: &mut Value,
        source: Source,
    ) -> Result<(), Again> {
        let key = (
            annotation.id,
            annotation.updated_at.clone().unwrap_or_default(),
        );
        if self.handled.contains(&key) {
            return Ok(());
        }
        let meta = task.get("meta").cloned().unwrap_or(Value::Null);
        let outcome = match ledger::step(&meta, annotation.id, annotation.updated_at.as_deref()) {
            Step::Done => {
                self.remember(key);
                return Ok(());
            }
            Step::Updated => {
                self.context.metrics.skipped(Skip::Updated);
                "updated"
            }
            Step::Handle => {
                let reviewer = self.email(annotation.completed_by).await?;
                debug!(annotation = annotation.id, %reviewer, "publishing an annotation");
                let data = task.get("data").cloned().unwrap_or(Value::Null);
                match completed(annotation, &data, &reviewer) {
                    Ok(record) => {
                        if let Err(e) = self.publisher.publish(&record).await {
                            self.context.metrics.publish_failed();
                            warn!(id = %record.id, error = %e, "answer not acknowledged by the broker; the catch-up tries again");
                            return Err(Again);
                        }
                        self.context.metrics.published(source);
                        debug!(id = %record.id, annotation = annotation.id, source = source.as_str(), "answer published");
                        "published"
                    }
                    Err(NoAnswer::NoId) => {
                        // Not the bridge's task: its meta is left alone.
                        self.context.metrics.skipped(Skip::NoId);
                        self.remember(key);
                        return Ok(());
                    }
                    Err(NoAnswer::Cancelled) => {
                        self.context.metrics.skipped(Skip::Cancelled);
                        "cancelled"
                    }
                    Err(NoAnswer::Empty) => {
                        self.context.metrics.skipped(Skip::Empty);
                        "empty"
                    }
                    Err(NoAnswer::Unreadable(detail)) => {
                        self.context.metrics.skipped(Skip::Unreadable);
                        warn!(annotation = annotation.id, task = annotation.task, %detail, "annotation skipped");
                        "unreadable"
                    }
                }
            }
        };
        let meta = ledger::record(
            &meta,
            annotation.id,
            annotation.updated_at.as_deref(),
            outcome,
        );
        match self.context.api.set_task_meta(annotation.task, &meta).await {
            Ok(()) => self.context.api_ok(),
            // Published but not recorded: this process remembers it; after a restart the
            // answer may be published again, and the joiner counts a reviewer once per item.
            Err(e) => self
                .context
                .api_failed(&e, "recording a handled annotation", &mut self.warned),
        }
        task["meta"] = meta;
        self.remember(key);
        Ok(())
    }

    async fn email(&mut self, user: u64) -> Result<String, Again> {
        if let Some(email) = self.emails.get(&user) {
            return Ok(email.clone());
        }
        match self.context.api.user_email(user).await {
            Ok(email) => {
                self.emails.insert(user, email.clone());
                Ok(email)
            }
            Err(e) => {
                self.context
                    .api_failed(&e, "reading an annotator's email", &mut self.warned);
                Err(Again)
            }
        }
    }

    fn remember(&mut self, key: (u64, String)) {
        if self.handled.len() >= MAX_REMEMBERED {
            // The ledger still knows; this only saves look-ups.
            self.handled.clear();
        }
        self.handled.insert(key);
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
