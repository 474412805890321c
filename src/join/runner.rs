//! The joiner's Kafka loop: one consumer in the group over the review and completed topics,
//! one task per assigned partition (its [`JoinState`], its transactional producer, its input
//! positions), and a reader that restores state and fetches review payloads by offset.
//!
//! Everything here blocks (librdkafka's transactional API does), so it runs on a thread of
//! its own; [`super::run`] is the async face.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::JoinConfig;
use super::JoinError;
use super::answer::{self, Invalid};
use super::state::{Effect, Entry, JoinState, ReceivedAnswer, ReviewOutcome, ReviewRef, Rules};
use crate::kafka::KafkaConfig;
use crate::kafka::{CE_DEAD_LETTER, CE_RETRAINING_EXAMPLE, client_config, cloudevent_headers};
use crate::metrics::Metrics;
use crate::record::{
    DeadLetter, DeadLetterReason, Encoding, Payload, RetrainingRecord, ReviewRecord, rfc3339_millis,
};

/// A batch closes after this many records…
const MAX_BATCH_RECORDS: usize = 5_000;
/// …or this many payload bytes (review payloads can be megabytes)…
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// …or this long after its first record: the latency a transaction adds.
const LINGER: Duration = Duration::from_millis(100);
/// How long one poll waits when nothing is in flight; timers are checked this often.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// A topic-partition that delivered nothing for this long is taken as caught up, so its
/// watermark is the wall clock (see [`Clock`]).
const CAUGHT_UP_AFTER: Duration = Duration::from_secs(2);
/// Dead letters carry at most this much of the original payload; the whole record stays at
/// the source topic, partition and offset the dead letter names.
const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;
/// Bound on each transactional call and on restore progress.
const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// A restore or a fetch that makes no progress for this long fails.
const READ_STALL: Duration = Duration::from_secs(60);

/// Changelog key of a partition's input positions; ids are stored under `i:<id>`.
const POSITIONS_KEY: &str = "p";
const ID_KEY_PREFIX: &str = "i:";

/// What the loop needs from the configuration, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub kafka: KafkaConfig,
    pub bootstrap: String,
    pub group_id: String,
    pub review_topic: String,
    pub completed_topic: String,
    pub state_topic: String,
    pub retraining_topic: String,
    pub dead_letter_topic: String,
    pub rules: Rules,
}

impl Settings {
    pub fn new(join: &JoinConfig, kafka: &KafkaConfig, bootstrap: &str) -> Settings {
        Settings {
            kafka: kafka.clone(),
            bootstrap: bootstrap.to_owned(),
            group_id: join.group_id.clone(),
            review_topic: kafka.review_topic.clone(),
            completed_topic: kafka.completed_topic.clone(),
            state_topic: state_topic_name(&join.group_id),
            retraining_topic: kafka.retraining_topic.clone(),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
            rules: Rules::from_config(join),
        }
    }

    fn consumer(&self) -> Result<BaseConsumer<JoinContext>, KafkaError> {
        let mut client = client_config(
            &self.kafka,
            &self.bootstrap,
            &[
                ("client.id", "reviewloop-join"),
                ("auto.offset.reset", "earliest"),
                // The first poll after an assignment must see records from every partition
                // quickly; librdkafka's defaults are fine for the rest.
                ("fetch.wait.max.ms", "100"),
            ],
        );
        // Not overridable: offsets are committed in the producing transaction only, the
        // state must never include aborted input, and the range assignor is what gives one
        // member the same partition of both co-partitioned topics.
        client
            .set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "range");
        client.create_with_context(JoinContext {
            core: Mutex::new(None),
        })
    }

    fn reader(&self) -> Result<BaseConsumer<ReaderContext>, KafkaError> {
        let mut client = client_config(
            &self.kafka,
            &self.bootstrap,
            &[
                ("client.id", "reviewloop-join-reader"),
                ("auto.offset.reset", "earliest"),
                ("fetch.wait.max.ms", "50"),
            ],
        );
        // librdkafka wants a group for assign(); this one never joins or commits.
        client
            .set("group.id", format!("{}-reader", self.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed");
        client.create_with_context(ReaderContext)
    }

    fn producer(&self, partition: i32) -> Result<BaseProducer, KafkaError> {
        let mut client = client_config(
            &self.kafka,
            &self.bootstrap,
            &[
                ("client.id", "reviewloop-join"),
                ("linger.ms", "5"),
                ("transaction.timeout.ms", "60000"),
            ],
        );
        client.set(
            "transactional.id",
            transactional_id(&self.group_id, partition),
        );
        client.create()
    }
}

/// The compacted topic holding the joiner's state: `<group_id>-state`, with characters Kafka
/// does not allow in topic names replaced by `_`.
pub fn state_topic_name(group_id: &str) -> String {
    let clean: String = group_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}-state")
}

/// One transactional id per input partition: whoever owns the partition next initialises the
/// same id, which aborts a crashed owner's open transaction and fences it for good.
pub fn transactional_id(group_id: &str, partition: i32) -> String {
    format!("{group_id}-join-{partition}")
}

/// The input positions of one partition, stored in the changelog with the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Positions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    review: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed: Option<i64>,
}

/// How far one input topic-partition has been read, in record time.
#[derive(Debug)]
struct Clock {
    newest_ms: i64,
    last_record: Instant,
}

impl Clock {
    fn new(now: Instant) -> Clock {
        Clock {
            newest_ms: i64::MIN,
            last_record: now,
        }
    }

    fn saw(&mut self, timestamp_ms: i64, now: Instant) {
        self.newest_ms = self.newest_ms.max(timestamp_ms);
        self.last_record = now;
    }

    /// The wall clock once the topic-partition has been quiet for a while (read to its end),
    /// else the newest record time read: a backlog is judged by its own timestamps.
    fn watermark(&self, now_ms: i64, now: Instant) -> i64 {
        if now.duration_since(self.last_record) >= CAUGHT_UP_AFTER {
            now_ms
        } else {
            self.newest_ms
        }
    }
}

/// One assigned partition: its state, its producer and where its inputs have been read to.
struct Task {
    partition: i32,
    producer: BaseProducer,
    state: JoinState,
    positions: Positions,
    review_clock: Clock,
    completed_clock: Clock,
}

/// The reader's context: the end of a partition is how a restore ends, not an error, but
/// librdkafka also reports it as a client-wide error, which the default context logs as one.
struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            debug!(reason, "reader reached the end of a partition");
        } else {
            warn!(error = %error, reason, "librdkafka error in the joiner's reader");
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// The consumer's context: rebalances build and drop tasks here, inside `poll`.
struct JoinContext {
    core: Mutex<Option<Core>>,
}

impl ClientContext for JoinContext {}

impl ConsumerContext for JoinContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        let mut guard = lock(&self.core);
        let Some(core) = guard.as_mut() else {
            let _ = consumer.unassign();
            return;
        };
        core.rebalanced = true;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match core.on_assign(consumer, partitions) {
                    Ok(assignment) => {
                        if let Err(e) = consumer.assign(&assignment) {
                            core.fatal.get_or_insert(JoinError::Kafka(e));
                        }
                    }
                    Err(e) => {
                        // Nothing is processed without its task; the loop stops on `fatal`.
                        core.fatal.get_or_insert(e);
                        let _ = consumer.assign(partitions);
                    }
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                core.on_revoke(consumer.assignment_lost());
                let _ = consumer.unassign();
            }
            other => {
                warn!(error = ?other, "rebalance error; dropping all partitions");
                core.on_revoke(true);
                let _ = consumer.unassign();
            }
        }
        core.metrics.reviews_pending.set(core.pending() as i64);
        core.metrics
            .join_partitions_assigned
            .set(core.tasks.len() as i64);
    }
}

/// Everything the loop and the rebalance callback share.
struct Core {
    settings: Settings,
    metrics: Arc<Metrics>,
    reader: BaseConsumer<ReaderContext>,
    tasks: BTreeMap<i32, Task>,
    /// Revoked tasks kept until the next assignment: a partition handed straight back keeps
    /// its state instead of restoring it (its transactions were all committed before the
    /// poll that revoked it).
    standby: BTreeMap<i32, Task>,
    /// Set by any rebalance: records polled before it are re-read from the new positions.
    rebalanced: bool,
    fatal: Option<JoinError>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the loop until `stop` is set. Blocks.
pub(crate) fn run_blocking(
    settings: Settings,
    metrics: Arc<Metrics>,
    stop: &AtomicBool,
) -> Result<(), JoinError> {
    let reader = settings.reader()?;
    let consumer = settings.consumer()?;
    // Every line of this joiner, rebalance callbacks included, names its group (and which
    // joiner of this process it is, when one process runs several).
    static INSTANCES: AtomicUsize = AtomicUsize::new(0);
    let _span = tracing::info_span!(
        "join",
        group = %settings.group_id,
        instance = INSTANCES.fetch_add(1, Ordering::Relaxed)
    )
    .entered();
    *lock(&consumer.context().core) = Some(Core {
        settings: settings.clone(),
        metrics,
        reader,
        tasks: BTreeMap::new(),
        standby: BTreeMap::new(),
        rebalanced: false,
        fatal: None,
    });
    consumer.subscribe(&[&settings.review_topic, &settings.completed_topic])?;
    info!(
        group = %settings.group_id,
        review = %settings.review_topic,
        completed = %settings.completed_topic,
        state = %settings.state_topic,
        "joiner started"
    );
    let result = poll_loop(&consumer, stop);
    // Leaving the group runs the revoke callback; every transaction is already committed.
    consumer.unsubscribe();
    drop(consumer);
    info!("joiner stopped");
    result
}

fn poll_loop(consumer: &BaseConsumer<JoinContext>, stop: &AtomicBool) -> Result<(), JoinError> {
    while !stop.load(Ordering::SeqCst) {
        let mut batch: Vec<BorrowedMessage<'_>> = Vec::new();
        let mut bytes = 0usize;
        let mut first_at: Option<Instant> = None;
        while batch.len() < MAX_BATCH_RECORDS && bytes < MAX_BATCH_BYTES {
            let wait = match first_at {
                None => IDLE_POLL,
                Some(at) => match LINGER.checked_sub(at.elapsed()) {
                    Some(left) => left,
                    None => break,
                },
            };
            match consumer.poll(wait) {
                None if first_at.is_none() => break,
                None => {}
                Some(Ok(message)) => {
                    bytes += message.payload_len();
                    first_at.get_or_insert_with(Instant::now);
                    batch.push(message);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                // librdkafka retries broker errors itself; these are reports.
                Some(Err(e)) => warn!(error = %e, "consumer error"),
            }
        }
        let mut guard = lock(&consumer.context().core);
        let core = guard.as_mut().expect("core is set before subscribing");
        if let Some(e) = core.fatal.take() {
            return Err(e);
        }
        if std::mem::take(&mut core.rebalanced) {
            debug!(
                dropped = batch.len(),
                "rebalanced while polling; re-reading"
            );
            continue;
        }
        core.process(consumer, batch)?;
    }
    Ok(())
}

/// A record to write in a task's transaction.
struct Output {
    topic: String,
    partition: Option<i32>,
    key: Option<String>,
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
}

/// Metric updates of one transaction, applied only once it commits.
#[derive(Default)]
struct Tally {
    answers: BTreeMap<&'static str, u64>,
    dead_letters: BTreeMap<&'static str, u64>,
    retraining: u64,
    turnaround_seconds: Vec<f64>,
}

impl Core {
    fn pending(&self) -> usize {
        self.tasks.values().map(|t| t.state.pending()).sum()
    }

    fn on_assign(
        &mut self,
        consumer: &BaseConsumer<JoinContext>,
        assigned: &TopicPartitionList,
    ) -> Result<TopicPartitionList, JoinError> {
        let mut partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut standby = std::mem::take(&mut self.standby);
        for &partition in &partitions {
            let task = match standby.remove(&partition) {
                Some(task) => task,
                None => self.bootstrap(consumer, partition)?,
            };
            self.tasks.insert(partition, task);
        }
        info!(?partitions, "partitions assigned");
        // Tasks not handed back are dropped here, and their producers with them.
        drop(standby);
        let mut assignment = TopicPartitionList::new();
        for element in assigned.elements() {
            let task = &self.tasks[&element.partition()];
            let position = if element.topic() == self.settings.review_topic {
                task.positions.review
            } else {
                task.positions.completed
            };
            assignment.add_partition_offset(
                element.topic(),
                element.partition(),
                position.map_or(Offset::Beginning, Offset::Offset),
            )?;
        }
        Ok(assignment)
    }

    fn on_revoke(&mut self, lost: bool) {
        let revoked: Vec<i32> = self.tasks.keys().copied().collect();
        if lost {
            // Someone else may have processed them meanwhile: nothing held is current.
            warn!(partitions = ?revoked, "partitions lost");
            self.tasks.clear();
            self.standby.clear();
        } else {
            info!(partitions = ?revoked, "partitions revoked");
            self.standby.append(&mut self.tasks);
        }
    }

    /// A task for `partition`: its producer initialised (which aborts and fences whatever a
    /// previous owner left open), then its state and positions restored from the changelog.
    fn bootstrap(
        &mut self,
        consumer: &BaseConsumer<JoinContext>,
        partition: i32,
    ) -> Result<Task, JoinError> {
        let started = Instant::now();
        let producer = self.settings.producer(partition)?;
        producer.init_transactions(TXN_TIMEOUT)?;
        let (state, mut positions) = restore(
            &self.reader,
            &self.settings.state_topic,
            partition,
            self.settings.rules,
        )?;
        if positions == Positions::default() {
            // No changelog yet: the group's committed offsets, if any, are where a previous
            // joiner stopped (e.g. after the state topic was recreated).
            let mut wanted = TopicPartitionList::new();
            wanted.add_partition(&self.settings.review_topic, partition);
            wanted.add_partition(&self.settings.completed_topic, partition);
            if let Ok(committed) = consumer.committed_offsets(wanted, TXN_TIMEOUT) {
                for element in committed.elements() {
                    if let Offset::Offset(offset) = element.offset() {
                        if element.topic() == self.settings.review_topic {
                            positions.review = Some(offset);
                        } else {
                            positions.completed = Some(offset);
                        }
                    }
                }
            }
        }
        info!(
            partition,
            pending = state.pending(),
            held = state.held(),
            review_offset = ?positions.review,
            completed_offset = ?positions.completed,
            took_ms = started.elapsed().as_millis() as u64,
            "partition state restored"
        );
        let now = Instant::now();
        Ok(Task {
            partition,
            producer,
            state,
            positions,
            review_clock: Clock::new(now),
            completed_clock: Clock::new(now),
        })
    }

    fn process(
        &mut self,
        consumer: &BaseConsumer<JoinContext>,
        batch: Vec<BorrowedMessage<'_>>,
    ) -> Result<(), JoinError> {
        let mut by_partition: BTreeMap<i32, Vec<&BorrowedMessage<'_>>> = BTreeMap::new();
        for message in &batch {
            by_partition
                .entry(message.partition())
                .or_default()
                .push(message);
        }
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for partition in partitions {
            let messages = by_partition.remove(&partition).unwrap_or_default();
            let mut task = self.tasks.remove(&partition).expect("listed above");
            match self.run_transaction(consumer, &mut task, &messages) {
                Ok(()) => {
                    self.tasks.insert(partition, task);
                }
                Err(e) => {
                    warn!(partition, error = %e, "transaction failed; restoring the partition and re-reading");
                    // The state and positions in memory include the aborted batch: start
                    // again from what the changelog says was committed.
                    drop(task);
                    let task = self.bootstrap(consumer, partition)?;
                    let mut rewind = TopicPartitionList::new();
                    for (topic, position) in [
                        (&self.settings.review_topic, task.positions.review),
                        (&self.settings.completed_topic, task.positions.completed),
                    ] {
                        rewind.add_partition_offset(
                            topic,
                            partition,
                            position.map_or(Offset::Beginning, Offset::Offset),
                        )?;
                    }
                    consumer.seek_partitions(rewind, TXN_TIMEOUT)?;
                    self.tasks.insert(partition, task);
                }
            }
        }
        for (partition, messages) in by_partition {
            debug!(
                partition,
                records = messages.len(),
                "records for a partition without a task; ignored"
            );
        }
        self.metrics.reviews_pending.set(self.pending() as i64);
        Ok(())
    }

    /// Applies `messages` and due timers to `task` and writes the outputs, the changelog and
    /// the input offsets in one transaction. Does nothing when there is nothing to write.
    fn run_transaction(
        &self,
        consumer: &BaseConsumer<JoinContext>,
        task: &mut Task,
        messages: &[&BorrowedMessage<'_>],
    ) -> Result<(), TxnError> {
        let settings = &self.settings;
        let now = Instant::now();
        let now_ms = unix_millis(SystemTime::now());
        let mut tally = Tally::default();
        let mut outputs: Vec<Output> = Vec::new();
        let mut effects: Vec<Effect> = Vec::new();
        // Review payloads read in this batch, so items completing now need no fetch.
        let mut fresh_reviews: HashMap<i64, &[u8]> = HashMap::new();
        let positions_before = task.positions;

        for message in messages {
            let offset = message.offset();
            let timestamp_ms = message.timestamp().to_millis().unwrap_or(now_ms);
            let is_review = message.topic() == settings.review_topic;
            let position = if is_review {
                &mut task.positions.review
            } else {
                &mut task.positions.completed
            };
            if position.is_some_and(|next| offset < next) {
                continue; // already applied (delivered again after a seek)
            }
            *position = Some(offset + 1);
            let bytes = message.payload().unwrap_or_default();
            if is_review {
                task.review_clock.saw(timestamp_ms, now);
                match answer::parse_review(bytes) {
                    Ok(record) => {
                        fresh_reviews.insert(offset, bytes);
                        let review = ReviewRef {
                            offset,
                            timestamp_ms,
                        };
                        let (outcome, effect) = task.state.on_review(&record.id, review);
                        if let ReviewOutcome::Accepted { early_answers } = outcome {
                            *tally.answers.entry("accepted").or_default() += early_answers as u64;
                        }
                        effects.extend(effect);
                    }
                    Err(invalid) => {
                        outputs.push(invalid_dead_letter(settings, message, invalid, &mut tally));
                    }
                }
            } else {
                task.completed_clock.saw(timestamp_ms, now);
                match answer::parse_completed(bytes) {
                    Ok((id, answers)) => {
                        for answer in answers {
                            let received = ReceivedAnswer {
                                answer,
                                offset,
                                timestamp_ms,
                            };
                            let (outcome, effect) = task.state.on_answer(&id, received);
                            if let Some(label) = outcome.label() {
                                *tally.answers.entry(label).or_default() += 1;
                            }
                            effects.extend(effect);
                        }
                    }
                    Err(invalid) => {
                        *tally.answers.entry("invalid").or_default() += 1;
                        outputs.push(invalid_dead_letter(settings, message, invalid, &mut tally));
                    }
                }
            }
        }
        effects.extend(task.state.expire(
            task.review_clock.watermark(now_ms, now),
            task.completed_clock.watermark(now_ms, now),
        ));

        // Reviews completing now whose record was read in an earlier batch: by offset.
        let mut wanted: Vec<i64> = effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Joined { review, .. } if !fresh_reviews.contains_key(&review.offset) => {
                    Some(review.offset)
                }
                _ => None,
            })
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let fetched = fetch_records(
            &self.reader,
            &settings.review_topic,
            task.partition,
            &wanted,
        )
        .map_err(TxnError::Kafka)?;
        for effect in effects {
            if let Effect::Dead {
                reason: DeadLetterReason::Orphan,
                answers,
                ..
            } = &effect
            {
                *tally.answers.entry("orphan").or_default() += answers.len() as u64;
            }
            let review_bytes = match &effect {
                Effect::Joined { review, .. } => fresh_reviews
                    .get(&review.offset)
                    .copied()
                    .or_else(|| fetched.get(&review.offset).map(Vec::as_slice)),
                Effect::Dead { .. } => None,
            };
            outputs.push(render_effect(
                settings,
                task.partition,
                effect,
                review_bytes,
                &mut tally,
            ));
        }

        let changes = task.state.take_changes();
        if outputs.is_empty() && changes.is_empty() && task.positions == positions_before {
            return Ok(());
        }
        for (id, entry) in changes {
            outputs.push(Output {
                topic: settings.state_topic.clone(),
                partition: Some(task.partition),
                key: Some(format!("{ID_KEY_PREFIX}{id}")),
                payload: entry.map(|e| serde_json::to_vec(&e).expect("entries serialize")),
                headers: None,
            });
        }
        outputs.push(Output {
            topic: settings.state_topic.clone(),
            partition: Some(task.partition),
            key: Some(POSITIONS_KEY.to_owned()),
            payload: Some(serde_json::to_vec(&task.positions).expect("positions serialize")),
            headers: None,
        });

        let producer = &task.producer;
        producer.begin_transaction().map_err(TxnError::Kafka)?;
        for output in &outputs {
            send(producer, output)?;
        }
        let mut offsets = TopicPartitionList::new();
        for (topic, position) in [
            (&settings.review_topic, task.positions.review),
            (&settings.completed_topic, task.positions.completed),
        ] {
            if let Some(next) = position {
                offsets
                    .add_partition_offset(topic, task.partition, Offset::Offset(next))
                    .map_err(TxnError::Kafka)?;
            }
        }
        if offsets.count() > 0
            && let Some(group) = consumer.group_metadata()
        {
            producer
                .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
                .map_err(|e| abort(producer, e))?;
        }
        producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| abort(producer, e))?;

        for (outcome, n) in tally.answers {
            self.metrics
                .join_answers_total
                .with_label_values(&[outcome])
                .inc_by(n);
        }
        for (reason, n) in tally.dead_letters {
            self.metrics
                .dead_letters_total
                .with_label_values(&[reason])
                .inc_by(n);
        }
        self.metrics
            .retraining_records_total
            .inc_by(tally.retraining);
        for seconds in tally.turnaround_seconds {
            self.metrics.review_turnaround_seconds.observe(seconds);
        }
        Ok(())
    }
}

/// A failed transaction: the task is rebuilt from the changelog either way.
#[derive(Debug, thiserror::Error)]
enum TxnError {
    #[error(transparent)]
    Kafka(KafkaError),
}

impl From<TxnError> for JoinError {
    fn from(e: TxnError) -> JoinError {
        match e {
            TxnError::Kafka(e) => JoinError::Kafka(e),
        }
    }
}

/// Aborts the open transaction after `error` (best effort: a fenced producer cannot).
fn abort(producer: &BaseProducer, error: KafkaError) -> TxnError {
    if let Err(abort_error) = producer.abort_transaction(TXN_TIMEOUT) {
        debug!(error = %abort_error, "abort failed");
    }
    TxnError::Kafka(error)
}

fn send(producer: &BaseProducer, output: &Output) -> Result<(), TxnError> {
    loop {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&output.topic);
        if let Some(partition) = output.partition {
            record = record.partition(partition);
        }
        if let Some(key) = &output.key {
            record = record.key(key.as_str());
        }
        if let Some(payload) = &output.payload {
            record = record.payload(payload.as_slice());
        }
        if let Some(headers) = &output.headers {
            record = record.headers(headers.clone());
        }
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(abort(producer, e)),
        }
    }
}

fn unix_millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn time_of(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

fn invalid_dead_letter(
    settings: &Settings,
    message: &BorrowedMessage<'_>,
    invalid: Invalid,
    tally: &mut Tally,
) -> Output {
    let bytes = message.payload().unwrap_or_default();
    let content_type = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("content-type"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_owned)
    });
    let (payload, cut) = original_payload(content_type.as_deref(), bytes);
    let mut detail = invalid.detail;
    if message.payload().is_none() {
        detail = "the record has no value".into();
    }
    if cut {
        detail.push_str(&format!(
            " (payload cut to {DEAD_LETTER_PAYLOAD_MAX} of {} bytes; the whole record is at the source offset)",
            bytes.len()
        ));
    }
    dead_letter_output(
        settings,
        DeadLetter {
            reason: DeadLetterReason::Invalid,
            id: invalid.id,
            source_topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            detail: Some(detail),
            payload,
        },
        tally,
    )
}

/// The original bytes as a dead letter's payload: JSON when they parse, else text or base64;
/// cut to [`DEAD_LETTER_PAYLOAD_MAX`] (the flag says so) so a dead letter always fits.
fn original_payload(content_type: Option<&str>, bytes: &[u8]) -> (Payload, bool) {
    let cut = bytes.len() > DEAD_LETTER_PAYLOAD_MAX;
    let kept = &bytes[..bytes.len().min(DEAD_LETTER_PAYLOAD_MAX)];
    if !cut && let Ok(value) = serde_json::from_slice::<Value>(kept) {
        return (
            Payload {
                content_type: content_type.map(str::to_owned),
                encoding: Encoding::Json,
                body: value,
            },
            false,
        );
    }
    (Payload::from_bytes(content_type, kept), cut)
}

fn dead_letter_output(settings: &Settings, letter: DeadLetter, tally: &mut Tally) -> Output {
    *tally
        .dead_letters
        .entry(letter.reason.as_str())
        .or_default() += 1;
    let time = rfc3339_millis(SystemTime::now());
    let key = letter.id.clone();
    Output {
        topic: settings.dead_letter_topic.clone(),
        partition: None,
        headers: Some(cloudevent_headers(
            CE_DEAD_LETTER,
            key.as_deref().unwrap_or(""),
            &time,
        )),
        key,
        payload: Some(serde_json::to_vec(&letter).expect("dead letters serialize")),
    }
}

/// The record an effect becomes: a retraining record, or a dead letter pointing at the
/// review record (no agreement, expired) or at the first orphaned answer.
fn render_effect(
    settings: &Settings,
    partition: i32,
    effect: Effect,
    review_bytes: Option<&[u8]>,
    tally: &mut Tally,
) -> Output {
    match effect {
        Effect::Joined {
            id,
            review,
            answers,
            label,
            agreement,
            completed_at_ms,
        } => {
            let record = match review_bytes.map(answer::parse_review) {
                Some(Ok(record)) => Ok(record),
                None => Err(format!(
                    "the review record at offset {} is no longer on the topic",
                    review.offset
                )),
                Some(Err(invalid)) => Err(invalid.detail),
            };
            let record = match record {
                Ok(record) => record,
                // The review record is gone (retention shorter than review_timeout) or no
                // longer reads: the answers are not lost, they go to a dead letter.
                Err(detail) => {
                    return dead_letter_output(
                        settings,
                        summary_dead_letter(
                            settings,
                            partition,
                            DeadLetterReason::Expired,
                            id,
                            Some(review),
                            &answers,
                            Some(detail),
                        ),
                        tally,
                    );
                }
            };
            let reviewed_at = rfc3339_millis(time_of(completed_at_ms));
            tally.retraining += 1;
            tally
                .turnaround_seconds
                .push((completed_at_ms - review.timestamp_ms).max(0) as f64 / 1000.0);
            let retraining = retraining_record(record, label, agreement, &answers, reviewed_at);
            Output {
                topic: settings.retraining_topic.clone(),
                partition: None,
                headers: Some(cloudevent_headers(
                    CE_RETRAINING_EXAMPLE,
                    &retraining.id,
                    &retraining.reviewed_at,
                )),
                key: Some(id),
                payload: Some(serde_json::to_vec(&retraining).expect("records serialize")),
            }
        }
        Effect::Dead {
            reason,
            id,
            review,
            answers,
        } => {
            let detail = match reason {
                DeadLetterReason::Orphan => Some(format!(
                    "no review record for this id within join.orphan_timeout on partition {partition}; \
                     answers must be keyed by id like the review topic"
                )),
                DeadLetterReason::Expired => Some(format!(
                    "{} of {} answers within join.review_timeout",
                    answers.len(),
                    settings.rules.reviewers_per_item
                )),
                DeadLetterReason::NoAgreement => Some(format!(
                    "the answers have no {} answer",
                    settings.rules.agreement.as_str()
                )),
                DeadLetterReason::Invalid => None,
            };
            dead_letter_output(
                settings,
                summary_dead_letter(settings, partition, reason, id, review, &answers, detail),
                tally,
            )
        }
    }
}

fn summary_dead_letter(
    settings: &Settings,
    partition: i32,
    reason: DeadLetterReason,
    id: String,
    review: Option<ReviewRef>,
    answers: &[ReceivedAnswer],
    detail: Option<String>,
) -> DeadLetter {
    let (source_topic, offset) = match review {
        Some(review) => (settings.review_topic.clone(), review.offset),
        None => (
            settings.completed_topic.clone(),
            answers.first().map_or(-1, |a| a.offset),
        ),
    };
    let body = serde_json::json!({
        "answers": answers.iter().map(|a| &a.answer).collect::<Vec<_>>(),
        "answer_offsets": answers.iter().map(|a| a.offset).collect::<Vec<_>>(),
    });
    DeadLetter {
        reason,
        id: Some(id),
        source_topic,
        partition,
        offset,
        detail,
        payload: Payload {
            content_type: Some("application/json".into()),
            encoding: Encoding::Json,
            body,
        },
    }
}

fn retraining_record(
    review: ReviewRecord,
    label: Value,
    agreement: f64,
    answers: &[ReceivedAnswer],
    reviewed_at: String,
) -> RetrainingRecord {
    RetrainingRecord {
        id: review.id,
        time: review.time,
        route: review.route,
        request: review.request,
        response: review.response,
        confidence: review.confidence,
        reasons: review.reasons,
        label,
        agreement,
        answers: answers.iter().map(|a| a.answer.clone()).collect(),
        reviewed_at,
        model: review.model,
    }
}

/// Rebuilds a partition's state and positions from the changelog, reading it to its end.
/// The caller has initialised the partition's producer first, so no transaction is open on
/// the partition and its end is final.
fn restore(
    reader: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    rules: Rules,
) -> Result<(JoinState, Positions), JoinError> {
    let mut state = JoinState::new(rules);
    let mut positions = Positions::default();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    reader.assign(&assignment)?;
    let (_, high) = reader.fetch_watermarks(topic, partition, TXN_TIMEOUT)?;
    let mut last_progress = Instant::now();
    let mut next = 0i64;
    loop {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                next = message.offset() + 1;
                let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                    continue;
                };
                if key == POSITIONS_KEY {
                    if let Some(value) = message.payload() {
                        positions = serde_json::from_slice(value).map_err(|e| {
                            JoinError::Corrupt(format!(
                                "{topic}/{partition}@{}: {e}",
                                message.offset()
                            ))
                        })?;
                    }
                } else if let Some(id) = key.strip_prefix(ID_KEY_PREFIX) {
                    let entry = match message.payload() {
                        None => None,
                        Some(value) => {
                            Some(serde_json::from_slice::<Entry>(value).map_err(|e| {
                                JoinError::Corrupt(format!(
                                    "{topic}/{partition}@{}: {e}",
                                    message.offset()
                                ))
                            })?)
                        }
                    };
                    state.restore(id, entry);
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => warn!(error = %e, topic, partition, "restore read error"),
            None => {
                // The end-of-partition event is what ends a restore (it accounts for
                // transaction markers, which are never delivered); this only covers a
                // partition that is empty.
                if next >= high {
                    break;
                }
                if last_progress.elapsed() > READ_STALL {
                    return Err(JoinError::Restore(format!(
                        "{topic}/{partition}: no progress for {}s at offset {next} of {high}",
                        READ_STALL.as_secs()
                    )));
                }
            }
        }
    }
    reader.unassign()?;
    Ok((state, positions))
}

/// The records at `offsets` (sorted) of one topic-partition, read in runs: one seek per gap,
/// then sequentially. A missing offset (deleted, compacted) is simply absent from the result.
fn fetch_records(
    reader: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    offsets: &[i64],
) -> Result<HashMap<i64, Vec<u8>>, KafkaError> {
    /// A gap larger than this is skipped with a seek rather than read through.
    const READ_THROUGH: i64 = 64;
    let mut found = HashMap::with_capacity(offsets.len());
    let Some(&first) = offsets.first() else {
        return Ok(found);
    };
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(first))?;
    reader.assign(&assignment)?;
    let mut wanted = offsets.iter().copied().peekable();
    let mut last_progress = Instant::now();
    while let Some(&target) = wanted.peek() {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let offset = message.offset();
                while wanted.next_if(|&o| o < offset).is_some() {} // gone
                if wanted.next_if_eq(&offset).is_some() {
                    found.insert(offset, message.payload().unwrap_or_default().to_vec());
                }
                if let Some(&next) = wanted.peek()
                    && next > offset + READ_THROUGH
                {
                    let mut seek = TopicPartitionList::new();
                    seek.add_partition_offset(topic, partition, Offset::Offset(next))?;
                    reader.assign(&seek)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // Past the end: what is still wanted does not exist.
                break;
            }
            Some(Err(e)) => warn!(error = %e, topic, partition, "fetch read error"),
            None if last_progress.elapsed() > READ_STALL => {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            None => {
                debug!(target, "waiting for a review record");
            }
        }
    }
    reader.unassign()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_topic_names_are_valid_topic_names() {
        assert_eq!(state_topic_name("reviewloop-join"), "reviewloop-join-state");
        assert_eq!(state_topic_name("team a/join"), "team_a_join-state");
    }

    #[test]
    fn dead_letter_payloads_are_json_when_they_parse_and_cut_when_huge() {
        let (payload, cut) = original_payload(None, br#"{"id": 3}"#);
        assert_eq!((payload.encoding, cut), (Encoding::Json, false));
        let noise: Vec<u8> = (0..1_048_576u64).map(|i| (i * 7919 % 251) as u8).collect();
        let (payload, cut) = original_payload(None, &noise);
        assert!(cut);
        assert_eq!(payload.encoding, Encoding::Base64);
        assert!(payload.to_bytes().unwrap().len() <= DEAD_LETTER_PAYLOAD_MAX);
    }

    #[test]
    fn clocks_use_record_time_until_caught_up() {
        let start = Instant::now();
        let mut clock = Clock::new(start);
        assert_eq!(clock.watermark(1_000, start), i64::MIN);
        clock.saw(500, start);
        assert_eq!(
            clock.watermark(1_000, start + Duration::from_millis(10)),
            500
        );
        assert_eq!(clock.watermark(9_000, start + CAUGHT_UP_AFTER), 9_000);
    }
}
