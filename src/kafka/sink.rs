//! The review sink: hands review records to Kafka without ever slowing an inference.
//!
//! # Delivery
//!
//! One idempotent librdkafka producer (`acks=all`) writes each [`ReviewRecord`] to
//! `kafka.review_topic`, keyed by record id, with CloudEvents headers
//! (`ce_type = reviewloop.review.requested`). Every option in `[kafka.options]` overrides the
//! defaults below.
//!
//! The bounded queue is librdkafka's own: `queue.buffering.max.messages = kafka.queue_capacity`
//! counts every record not yet acknowledged or failed (waiting, in flight, being retried), so it
//! bounds exactly what an outage can pile up. `queue.buffering.max.kbytes` (librdkafka's default
//! 1 GiB) bounds the same queue by size.
//!
//! - `delivery = "async"`: [`ReviewSink::send`] enqueues and returns; it never waits on the
//!   broker. A full queue skips the record (`reviews_skipped_total{reason="queue_full"}`).
//!   While the broker is away records wait in the queue, retried by librdkafka, until
//!   `message.timeout.ms` (librdkafka's default 5 minutes) makes them fail.
//! - `delivery = "sync"`: [`ReviewSink::send_and_wait`] resolves when the broker has acked the
//!   record, or fails after `kafka.ack_timeout`. A timed-out record stays queued and may still be
//!   delivered later; its delivery report is counted when it comes. `linger.ms` defaults to 0 in
//!   this mode since a response waits for each record. What the client sees is the caller's
//!   choice; reviewloop's proxy answers unchanged (reviews are a side channel) and counts and
//!   logs the failure.
//!
//! A record larger than librdkafka's `message.max.bytes` (1 MB by default; less a margin for
//! key, headers and framing) would be refused, so its captured bodies are cut to fit: the
//! larger body first, to a prefix of its bytes, carried as text (or base64), with
//! `truncated: true`. Raising `message.max.bytes` (and the topic's `max.message.bytes` on
//! the broker) keeps larger bodies whole.
//!
//! The review topic is at-least-once. Idempotence removes the duplicates of ordinary retries,
//! but a batch the broker wrote just as a connection broke can be written again once it is
//! back; the joiner drops a review record it already holds (same id), so retraining stays
//! exactly-once.
//!
//! # Accounting
//!
//! Every record handed to the sink ends in exactly one of:
//! `kafka_messages_total{outcome="delivered"}`, `reviews_skipped_total{reason="queue_full"}`, or
//! `reviews_skipped_total{reason="kafka_error"}` (refused at enqueue, or failed after it:
//! timed out, purged at shutdown, rejected by the broker). Records that reached the producer
//! and failed also count `kafka_messages_total{outcome="failed"}`. So `sent == delivered + queue_full + kafka_error`
//! once the queue is drained; nothing is lost silently. With a spool (below), a record the
//! broker could not take counts `spool_written_total` (or `spool_full`/`spool_error`) instead of
//! `queue_full`/`kafka_error`, and its later delivery counts `delivered` and
//! `spool_replayed_total`.
//!
//! # An unreachable broker
//!
//! [`ReviewSink::new`] never waits for the broker. A background thread fetches cluster metadata
//! every few seconds for as long as the sink lives: `reviewloop_kafka_up` is 1 while the broker
//! answers and 0 while it does not, and each change is logged once (an error while it stays
//! down, repeated each minute). Inference goes on meanwhile and records queue up.
//! [`ReviewSink::is_kafka_up`] is what `/readyz` reads when `server.ready_requires_kafka` asks
//! it to; by default readiness does not depend on Kafka, since reviews are a side channel.
//!
//! # The spool
//!
//! With `kafka.spool_dir` set, a record that cannot reach the broker goes to disk
//! ([`super::spool`]) instead of being dropped: when the producer's queue is full, when its
//! delivery fails with a transient error (timed out after `message.timeout.ms`, which defaults
//! to `kafka.spool_after` then; the broker gone; purged at shutdown), and, while the broker has
//! been unreachable for `kafka.spool_after` (or a delivery just timed out), at once, so that
//! little waits in memory when the process is killed. Such a record counts
//! `spool_written_total` instead of a skip; the replayer sends it again once the broker answers
//! (`spool_replayed_total`, and `kafka_messages_total{outcome="delivered"}` like any delivery).
//! A record the spool cannot take counts `spool_full` or `spool_error`. Errors that another
//! try cannot fix (a record too large, an unknown topic) still count `kafka_error`.

use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig, ThreadedProducer,
};
use rdkafka::message::{Headers, Message};
use tokio::sync::oneshot;

use super::spool::replay::{self, Batch, Resend, Resent};
use super::spool::segment::Entry;
use super::spool::{SEGMENT_BYTES, Spool, SpoolSettings};
use super::{
    CE_REVIEW_REQUESTED, KafkaError, client_config, cloudevent_headers_with_id, with_traceparent,
};
use super::{Delivery, KafkaConfig};
use crate::metrics::{DeliveryOutcome, Metrics, SkipReason};
use crate::record::ReviewRecord;

/// How long one metadata request of the broker monitor may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between the monitor's requests while the broker is unreachable…
const METADATA_RETRY: Duration = Duration::from_secs(1);
/// …and while it answers.
const METADATA_EVERY: Duration = Duration::from_secs(5);
/// At most one log line per this period for a repeated failure (an outage can fail thousands of
/// records a second; the counters carry the numbers).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a record did not reach the broker in `delivery = "sync"` mode.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The queue holds `kafka.queue_capacity` records already; this one was skipped.
    #[error("the Kafka queue is full; the review record was skipped")]
    QueueFull,
    /// No ack within `kafka.ack_timeout`; the record stays queued and may still be delivered.
    #[error("no ack from Kafka within {0:?}; the review record stays queued")]
    AckTimeout(Duration),
    /// The producer refused the record or the broker did not take it.
    #[error("Kafka did not take the review record: {0}")]
    Kafka(#[from] RdKafkaError),
    /// The sink was dropped before the delivery report arrived.
    #[error("the Kafka producer shut down before the record's delivery report")]
    Closed,
    /// The broker is away: the record went to the spool and is sent when it is back.
    #[error("Kafka is unreachable; the review record was kept in the spool")]
    Spooled,
    /// The broker is away and the spool could not take the record.
    #[error("Kafka is unreachable and the spool is full; the review record was skipped")]
    SpoolFull,
}

type AckSender = oneshot::Sender<Result<(), RdKafkaError>>;

/// What travels with each record through librdkafka to its delivery report.
struct Pending {
    ack: Option<AckSender>,
    /// A replayed record: the segment it came from waits for its report.
    batch: Option<Arc<Batch>>,
}

/// Logs a repeated event at most once per [`LOG_EVERY`], saying how many were not logged.
struct Throttle {
    started: Instant,
    next_log_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            started: Instant::now(),
            next_log_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last log)` when this occurrence should be logged.
    fn check(&self) -> Option<u64> {
        let now = self.started.elapsed().as_millis() as u64;
        let next = self.next_log_ms.load(Ordering::Relaxed);
        if now >= next
            && self
                .next_log_ms
                .compare_exchange(
                    next,
                    now + LOG_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Shared by the caller's threads and librdkafka's: counts outcomes, wakes waiters, logs.
struct SinkContext {
    metrics: Arc<Metrics>,
    topic: String,
    /// Records enqueued whose delivery report has not come yet.
    queued: AtomicUsize,
    failed_log: Throttle,
    error_log: Throttle,
    spool: Option<Spool>,
    /// With a spool: the broker is away, new records go straight to disk.
    outage: AtomicBool,
    /// `flush` began: the replayer sends nothing more.
    closing: AtomicBool,
}

impl SinkContext {
    /// Hands a record to the spool (counted there); whether it was taken.
    fn spool(&self, entry: Entry) -> bool {
        self.spool.as_ref().is_some_and(|spool| spool.append(entry))
    }

    fn log_failure(&self, error: &RdKafkaError, what: &str) {
        if let Some(suppressed) = self.failed_log.check() {
            tracing::warn!(
                error = %error,
                topic = %self.topic,
                suppressed,
                "{what}"
            );
        }
    }
}

/// Delivery failures another attempt can fix: the record is spooled rather than dropped.
fn is_transient(error: &RdKafkaError) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        error.rdkafka_error_code(),
        Some(
            MessageTimedOut
                | PurgeQueue
                | PurgeInflight
                | QueueFull
                | AllBrokersDown
                | BrokerTransportFailure
                | OperationTimedOut
                | TimedOutQueue
                | RequestTimedOut
                | NetworkException
                | LeaderNotAvailable
                | NotLeaderForPartition
                | NotEnoughReplicas
                | NotEnoughReplicasAfterAppend
                | BrokerNotAvailable
                | ReplicaNotAvailable
        )
    )
}

/// The spool entry of a message the producer gave back in a delivery report.
fn entry_of(message: &rdkafka::message::BorrowedMessage<'_>) -> Option<Entry> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let header = |name: &str| {
        message
            .headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(text)
    };
    Some(Entry {
        id: text(message.key()?),
        time: header("ce_time").unwrap_or_default(),
        ce_id: header("ce_id").unwrap_or_default(),
        traceparent: header("ce_traceparent"),
        value: message.payload()?.to_vec(),
    })
}

impl ClientContext for SinkContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: RdKafkaError, reason: &str) {
        // "All brokers down" and reconnect failures repeat for as long as an outage lasts.
        if let Some(suppressed) = self.error_log.check() {
            tracing::warn!(
                error = %error,
                reason,
                suppressed,
                queued = self.queued.load(Ordering::Relaxed),
                "Kafka producer error; review records wait in the queue, inference is unaffected"
            );
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<Pending>;

    fn delivery(&self, result: &DeliveryResult<'_>, pending: Box<Pending>) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let outcome = match result {
            Ok(_) => {
                self.metrics
                    .kafka_reported(&self.topic, DeliveryOutcome::Delivered, 1);
                if pending.batch.is_some() {
                    self.metrics.spool_replayed.inc();
                    // The broker takes records again: new ones may go to it directly.
                    self.outage.store(false, Ordering::Relaxed);
                }
                Ok(())
            }
            Err((error, message)) => {
                self.metrics
                    .kafka_reported(&self.topic, DeliveryOutcome::Failed, 1);
                match entry_of(message) {
                    Some(entry) if self.spool.is_some() && is_transient(error) => {
                        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut) {
                            // Waiting longer in memory would not help the next records either.
                            self.outage.store(true, Ordering::Relaxed);
                        }
                        if self.spool(entry) {
                            self.log_failure(error, "review records not delivered to Kafka are kept in the spool");
                        }
                    }
                    _ => {
                        self.metrics.review_skipped(SkipReason::KafkaError);
                        self.log_failure(error, "a review record was not delivered to Kafka");
                    }
                }
                Err(error.clone())
            }
        };
        if let Some(batch) = pending.batch {
            batch.done();
        }
        if let Some(ack) = pending.ack {
            // The waiter may have timed out and gone; the outcome is counted either way.
            let _ = ack.send(outcome);
        }
    }
}

struct Inner {
    producer: ThreadedProducer<SinkContext>,
    /// With a spool: how long the broker may be away before records go straight to disk.
    spool_after: Duration,
    /// The largest record value sent whole; bodies of larger records are cut to fit.
    max_record_bytes: usize,
    /// The broker answered the monitor's last metadata request.
    kafka_up: AtomicBool,
    ack_timeout: Duration,
    delivery: Delivery,
}

/// The producer of review records. Cheap to share: wrap it in an `Arc`.
/// What the sink needs of a serialized review record besides its bytes: the message key and
/// the CloudEvent headers' fields.
#[derive(Debug, Clone, Copy)]
pub struct RecordMeta<'a> {
    pub id: &'a str,
    pub time: &'a str,
    pub traceparent: Option<&'a str>,
}

pub struct ReviewSink {
    inner: Arc<Inner>,
}

impl ReviewSink {
    /// Creates the producer; never waits for the broker (see the module docs on readiness).
    /// Fails only on a bad client configuration (e.g. an unknown `[kafka.options]` key).
    pub fn new(
        config: &KafkaConfig,
        bootstrap: &str,
        metrics: Arc<Metrics>,
    ) -> Result<ReviewSink, KafkaError> {
        let queue_capacity = config.queue_capacity.to_string();
        let mut defaults = vec![
            ("client.id", "reviewloop-review-sink"),
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("queue.buffering.max.messages", queue_capacity.as_str()),
        ];
        if config.delivery == Delivery::Sync {
            defaults.push(("linger.ms", "0"));
        }
        let message_timeout = config.spool_after.as_millis().max(1).to_string();
        let spool = match &config.spool_dir {
            Some(dir) => {
                defaults.push(("message.timeout.ms", message_timeout.as_str()));
                let settings = SpoolSettings {
                    dir: dir.clone(),
                    max_bytes: config.spool_max_bytes,
                    fsync_interval: config.spool_fsync_interval,
                    segment_bytes: SEGMENT_BYTES.min(config.spool_max_bytes / 4),
                };
                Some(
                    Spool::open(settings, metrics.clone())
                        .map_err(|e| KafkaError::Config(e.to_string()))?,
                )
            }
            None => None,
        };
        let client = client_config(config, bootstrap, &defaults);
        let context = SinkContext {
            metrics,
            topic: config.review_topic.clone(),
            queued: AtomicUsize::new(0),
            failed_log: Throttle::new(),
            error_log: Throttle::new(),
            spool,
            outage: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        };
        let producer: ThreadedProducer<SinkContext> = client
            .create_with_context(context)
            .map_err(|e| KafkaError::Config(format!("cannot create the Kafka producer: {e}")))?;
        let spooling = producer.context().spool.is_some();
        let inner = Arc::new(Inner {
            producer,
            spool_after: config.spool_after,
            max_record_bytes: max_record_bytes(config),
            kafka_up: AtomicBool::new(false),
            ack_timeout: config.ack_timeout,
            delivery: config.delivery,
        });
        spawn_broker_monitor(Arc::downgrade(&inner), bootstrap.to_owned());
        if spooling {
            replay::spawn(Arc::downgrade(&inner));
        }
        Ok(ReviewSink { inner })
    }

    /// The largest record the producer takes (`message.max.bytes`); a larger one must be cut
    /// to fit ([`ReviewRecord::fit`]) before [`ReviewSink::submit_encoded`].
    pub fn max_record_bytes(&self) -> usize {
        self.inner.max_record_bytes
    }

    /// As [`ReviewSink::submit`], for a record already serialized (at most
    /// [`ReviewSink::max_record_bytes`]; a larger one is refused by the producer and counted).
    pub async fn submit_encoded(
        &self,
        meta: RecordMeta<'_>,
        value: Vec<u8>,
    ) -> Result<(), SinkError> {
        match self.inner.delivery {
            Delivery::Async => {
                let _ = self.enqueue_encoded(meta, value, None);
                Ok(())
            }
            Delivery::Sync => {
                let (ack, acked) = oneshot::channel();
                self.enqueue_encoded(meta, value, Some(ack))?;
                self.wait_for(acked).await
            }
        }
    }

    /// Hands the record over without waiting (`delivery = "async"`). A full queue or a record
    /// the producer refuses is skipped and counted, never retried here.
    pub fn send(&self, record: &ReviewRecord) {
        // The delivery report does the counting; an enqueue error is counted in `enqueue`.
        let _ = self.enqueue(record, None);
    }

    /// Resolves when the broker has acked the record (`delivery = "sync"`), bounded by
    /// `kafka.ack_timeout`.
    pub async fn send_and_wait(&self, record: &ReviewRecord) -> Result<(), SinkError> {
        let (ack, acked) = oneshot::channel();
        self.enqueue(record, Some(ack))?;
        self.wait_for(acked).await
    }

    async fn wait_for(
        &self,
        acked: oneshot::Receiver<Result<(), RdKafkaError>>,
    ) -> Result<(), SinkError> {
        match tokio::time::timeout(self.inner.ack_timeout, acked).await {
            Ok(Ok(outcome)) => outcome.map_err(SinkError::Kafka),
            Ok(Err(_)) => Err(SinkError::Closed),
            Err(_) => Err(SinkError::AckTimeout(self.inner.ack_timeout)),
        }
    }

    /// Sends as `kafka.delivery` says: `send` in async mode, `send_and_wait` in sync mode.
    pub async fn submit(&self, record: &ReviewRecord) -> Result<(), SinkError> {
        match self.inner.delivery {
            Delivery::Async => {
                self.send(record);
                Ok(())
            }
            Delivery::Sync => self.send_and_wait(record).await,
        }
    }

    fn enqueue(&self, record: &ReviewRecord, ack: Option<AckSender>) -> Result<(), SinkError> {
        let mut value = serde_json::to_vec(record).expect("a review record serializes to JSON");
        if value.len() > self.inner.max_record_bytes {
            let mut fitted = record.clone();
            fitted.fit(self.inner.max_record_bytes);
            tracing::debug!(
                id = %record.id,
                bytes = value.len(),
                max = self.inner.max_record_bytes,
                "review record bodies cut to fit the producer's message.max.bytes"
            );
            value = serde_json::to_vec(&fitted).expect("a review record serializes to JSON");
        }
        let meta = RecordMeta {
            id: &record.id,
            time: &record.time,
            traceparent: record.traceparent.as_deref(),
        };
        self.enqueue_encoded(meta, value, ack)
    }

    fn enqueue_encoded(
        &self,
        record: RecordMeta<'_>,
        value: Vec<u8>,
        ack: Option<AckSender>,
    ) -> Result<(), SinkError> {
        let context = self.inner.producer.context();
        let ce_id = crate::ids::new_v7_string();
        let entry = |value: Vec<u8>| Entry {
            id: record.id.to_owned(),
            time: record.time.to_owned(),
            ce_id: ce_id.clone(),
            traceparent: record.traceparent.map(str::to_owned),
            value,
        };
        if context.spool.is_some() && context.outage.load(Ordering::Relaxed) {
            return if context.spool(entry(value)) {
                Err(SinkError::Spooled)
            } else {
                Err(SinkError::SpoolFull)
            };
        }
        let headers = with_traceparent(
            cloudevent_headers_with_id(&ce_id, CE_REVIEW_REQUESTED, record.id, record.time),
            record.traceparent,
        );
        let pending = Box::new(Pending { ack, batch: None });
        let message = BaseRecord::with_opaque_to(&context.topic, pending)
            .key(record.id)
            .payload(value.as_slice())
            .headers(headers);
        // Counted before the send: the delivery report may run on librdkafka's thread before
        // `send` returns.
        context.queued.fetch_add(1, Ordering::Relaxed);
        match self.inner.producer.send(message) {
            Ok(()) => Ok(()),
            Err((error, _message)) => {
                context.queued.fetch_sub(1, Ordering::Relaxed);
                if context.spool.is_some() && is_transient(&error) {
                    if context.spool(entry(value.clone())) {
                        Err(SinkError::Spooled)
                    } else {
                        Err(SinkError::SpoolFull)
                    }
                } else if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                    context.metrics.review_skipped(SkipReason::QueueFull);
                    Err(SinkError::QueueFull)
                } else {
                    context.metrics.review_skipped(SkipReason::KafkaError);
                    if let Some(suppressed) = context.failed_log.check() {
                        tracing::warn!(
                            error = %error,
                            topic = %context.topic,
                            suppressed,
                            "the Kafka producer refused a review record"
                        );
                    }
                    Err(SinkError::Kafka(error))
                }
            }
        }
    }

    /// Whether the broker answered the last metadata request (checked every few seconds).
    pub fn is_kafka_up(&self) -> bool {
        self.inner.kafka_up.load(Ordering::Acquire)
    }

    /// Records enqueued whose delivery report has not come yet.
    pub fn queued(&self) -> usize {
        self.inner.producer.context().queued.load(Ordering::Relaxed)
    }

    /// The topic records go to.
    pub fn topic(&self) -> &str {
        &self.inner.producer.context().topic
    }

    /// Waits up to `timeout` for every queued record to be delivered or failed (on shutdown).
    /// Records still queued then are purged: kept in the spool when there is one (at once,
    /// without waiting, while the broker is known to be away), else counted as `kafka_error`.
    /// Returns how many were dropped (0 when everything was flushed or spooled). The replayer
    /// stops for good: call this once, at the end.
    pub async fn flush(&self, timeout: Duration) -> usize {
        let inner = Arc::clone(&self.inner);
        let joined = tokio::task::spawn_blocking(move || {
            let context = inner.producer.context();
            context.closing.store(true, Ordering::Relaxed);
            let dropped_before = dropped(context);
            let timeout = match &context.spool {
                Some(_) if context.outage.load(Ordering::Relaxed) => Duration::ZERO,
                _ => timeout,
            };
            let mut left = 0;
            if inner.producer.flush(timeout).is_err() {
                left = context.queued.load(Ordering::Relaxed);
                inner
                    .producer
                    .purge(PurgeConfig::default().queue().inflight());
                // Purged records report failure through the polling thread; wait briefly for
                // it so the counters are final when this returns.
                let _ = inner.producer.flush(Duration::from_millis(500));
            }
            if let Some(spool) = &context.spool {
                spool.sync();
                if left > 0 {
                    tracing::info!(
                        left,
                        dir = %spool.dir().display(),
                        "review records not delivered before shutdown are kept in the spool \
                         for the next start"
                    );
                }
                return (dropped(context) - dropped_before) as usize;
            }
            left
        })
        .await;
        let left = joined.unwrap_or_default();
        if left > 0 {
            tracing::error!(
                left,
                topic = %self.topic(),
                "review records not delivered to Kafka before shutdown; they were dropped"
            );
        }
        left
    }
}

/// Records lost for good so far (to compare before and after a flush).
fn dropped(context: &SinkContext) -> u64 {
    [
        SkipReason::KafkaError,
        SkipReason::SpoolFull,
        SkipReason::SpoolError,
    ]
    .into_iter()
    .map(|reason| context.metrics.reviews_skipped(reason))
    .sum()
}

impl Resend for Inner {
    fn spool(&self) -> &Spool {
        (self.producer.context().spool.as_ref()).expect("the replayer runs only with a spool")
    }

    fn metrics(&self) -> &Metrics {
        &self.producer.context().metrics
    }

    fn replay_allowed(&self) -> bool {
        let context = self.producer.context();
        self.kafka_up.load(Ordering::Acquire)
            && !context.outage.load(Ordering::Relaxed)
            && !context.closing.load(Ordering::Relaxed)
    }

    fn resend(&self, entry: Entry, batch: &Arc<Batch>) -> Resent {
        let context = self.producer.context();
        let headers = with_traceparent(
            cloudevent_headers_with_id(&entry.ce_id, CE_REVIEW_REQUESTED, &entry.id, &entry.time),
            entry.traceparent.as_deref(),
        );
        let pending = Box::new(Pending {
            ack: None,
            batch: Some(batch.clone()),
        });
        let message = BaseRecord::with_opaque_to(&context.topic, pending)
            .key(entry.id.as_str())
            .payload(entry.value.as_slice())
            .headers(headers);
        context.queued.fetch_add(1, Ordering::Relaxed);
        let Err(error) = self.producer.send(message).map_err(|(error, _)| error) else {
            return Resent::Sent;
        };
        context.queued.fetch_sub(1, Ordering::Relaxed);
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
            Resent::QueueFull(entry)
        } else if is_transient(&error) {
            context.spool(entry);
            Resent::Refused
        } else {
            context.metrics.review_skipped(SkipReason::KafkaError);
            context.log_failure(&error, "the Kafka producer refused a spooled review record");
            Resent::Refused
        }
    }
}

/// librdkafka's `message.max.bytes` (its default unless `[kafka.options]` sets it) less room
/// for the key, headers and framing: the largest record value the sink sends whole.
fn max_record_bytes(config: &KafkaConfig) -> usize {
    const LIBRDKAFKA_DEFAULT: usize = 1_000_000;
    const FRAMING: usize = 16 * 1024;
    let limit = config
        .options
        .get("message.max.bytes")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(LIBRDKAFKA_DEFAULT);
    limit.saturating_sub(FRAMING).max(limit / 2)
}

/// Fetches cluster metadata every few seconds while the sink lives, keeping `kafka_up` and its
/// gauge current and logging each change (an error while the broker stays away, each minute).
fn spawn_broker_monitor(inner: Weak<Inner>, bootstrap: String) {
    let spawned = thread::Builder::new()
        .name("review-sink-monitor".into())
        .spawn(move || {
            let mut down_since: Option<Instant> = Some(Instant::now());
            let mut next_log = Duration::ZERO;
            let mut was_up = false;
            loop {
                let Some(sink) = inner.upgrade() else { return };
                let answer = sink.producer.client().fetch_metadata(None, METADATA_TIMEOUT);
                let context = sink.producer.context();
                let up = answer.is_ok();
                sink.kafka_up.store(up, Ordering::Release);
                context.metrics.kafka_up.set(i64::from(up));
                if up {
                    // Records go to the broker (and the spool is replayed) until a delivery
                    // times out again: each answered metadata request is a new try.
                    context.outage.store(false, Ordering::Relaxed);
                }
                match answer {
                    Ok(metadata) => {
                        if !was_up {
                            tracing::info!(
                                bootstrap = %bootstrap,
                                brokers = metadata.brokers().len(),
                                queued = context.queued.load(Ordering::Relaxed),
                                "Kafka producer connected"
                            );
                        }
                        down_since = None;
                    }
                    Err(error) => {
                        let since = *down_since.get_or_insert_with(Instant::now);
                        if was_up {
                            next_log = Duration::ZERO;
                        }
                        if context.spool.is_some() && since.elapsed() >= sink.spool_after {
                            context.outage.store(true, Ordering::Relaxed);
                        }
                        let waited = since.elapsed();
                        if waited >= next_log {
                            tracing::error!(
                                bootstrap = %bootstrap,
                                error = %error,
                                waited = %humantime::format_duration(Duration::from_secs(waited.as_secs())),
                                queued = context.queued.load(Ordering::Relaxed),
                                "Kafka is unreachable: inference is still served, review records \
                                 wait in the queue (kafka.queue_capacity) until it comes back"
                            );
                            next_log = waited + Duration::from_secs(60);
                        }
                    }
                }
                was_up = up;
                drop(sink);
                thread::sleep(if up { METADATA_EVERY } else { METADATA_RETRY });
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the Kafka broker monitor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_logs_the_first_and_counts_the_rest() {
        let throttle = Throttle::new();
        assert_eq!(throttle.check(), Some(0));
        assert_eq!(throttle.check(), None);
        assert_eq!(throttle.check(), None);
        assert_eq!(throttle.suppressed.load(Ordering::Relaxed), 2);
    }
}
