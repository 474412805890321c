//! The joiner's Kafka loop: one consumer in the group over the review and completed topics,
//! batches polled from it, and one task per assigned partition (its [`Progress`] and its
//! transactional producer), built on assignment and dropped on revocation by the rebalance
//! callback. Each batch is one transaction per task ([`txn::run`]).
//!
//! Everything here blocks (librdkafka's transactional API does), so it runs on a thread of
//! its own; [`super::run`] is the async face.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::changelog::{self, Positions};
use super::clients::Settings;
use crate::kafka::ReaderContext;
use super::error::JoinError;
use super::render::{Input, Tally};
use super::txn::{self, Progress, TXN_TIMEOUT};
use crate::metrics::Metrics;

/// A batch closes after this many records…
const MAX_BATCH_RECORDS: usize = 5_000;
/// …or this many payload bytes (review payloads can be megabytes)…
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// …or this long after its first record: the latency a transaction adds.
const LINGER: Duration = Duration::from_millis(100);
/// How long one poll waits when nothing is in flight; timers are checked this often.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// One assigned partition: its producer and its join progress.
struct Task {
    producer: BaseProducer,
    progress: Progress,
}

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
    let consumer = settings.consumer(JoinContext {
        core: Mutex::new(None),
    })?;
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
        core.process(consumer, &batch)?;
    }
    Ok(())
}

/// A polled record as the transaction step reads it.
fn input<'a>(message: &'a BorrowedMessage<'_>) -> Input<'a> {
    let content_type = message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case("content-type"))
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    });
    Input {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis(),
        payload: message.payload(),
        content_type,
    }
}

/// Counts a committed transaction's outcomes.
fn count(metrics: &Metrics, tally: Tally) {
    for (result, n) in tally.answers {
        metrics.join_answered(result, n);
    }
    for (reason, n) in tally.dead_letters {
        metrics.dead_lettered(reason, n);
    }
    metrics.retraining_records_total.inc_by(tally.retraining);
    for counted in tally.agreements {
        let agreed = if counted.agreed { "true" } else { "false" };
        for reason in &counted.reasons {
            metrics
                .model_agreement_total
                .with_label_values(&[&counted.route, reason.as_str(), agreed])
                .inc();
        }
        if let Some(bucket) = counted.bucket {
            metrics
                .calibration_total
                .with_label_values(&[&counted.route, bucket, agreed])
                .inc();
        }
    }
    for seconds in tally.turnaround_seconds {
        metrics.review_turnaround_seconds.observe(seconds);
    }
}

impl Core {
    fn pending(&self) -> usize {
        self.tasks
            .values()
            .map(|t| t.progress.state.pending())
            .sum()
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
            let positions = self.tasks[&element.partition()].progress.positions;
            let position = if element.topic() == self.settings.review_topic {
                positions.review
            } else {
                positions.completed
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
        let (state, mut positions) = changelog::restore(
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
        Ok(Task {
            producer,
            progress: Progress::new(partition, state, positions, Instant::now()),
        })
    }

    /// Runs one transaction per task over its records of `batch` (and its due timers). A
    /// failed transaction rebuilds its task from the changelog and re-reads from there.
    fn process(
        &mut self,
        consumer: &BaseConsumer<JoinContext>,
        batch: &[BorrowedMessage<'_>],
    ) -> Result<(), JoinError> {
        let mut by_partition: BTreeMap<i32, Vec<Input<'_>>> = BTreeMap::new();
        for message in batch {
            by_partition
                .entry(message.partition())
                .or_default()
                .push(input(message));
        }
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for partition in partitions {
            let inputs = by_partition.remove(&partition).unwrap_or_default();
            let mut task = self.tasks.remove(&partition).expect("listed above");
            let result = txn::run(
                &self.settings,
                &self.reader,
                consumer,
                &task.producer,
                &mut task.progress,
                &inputs,
            );
            match result {
                Ok(tally) => {
                    count(&self.metrics, tally);
                    self.tasks.insert(partition, task);
                }
                Err(e) => {
                    warn!(partition, error = %e, "transaction failed; restoring the partition and re-reading");
                    // The state and positions in memory include the aborted batch: start
                    // again from what the changelog says was committed.
                    drop(task);
                    let task = self.bootstrap(consumer, partition)?;
                    let positions = task.progress.positions;
                    let mut rewind = TopicPartitionList::new();
                    for (topic, position) in [
                        (&self.settings.review_topic, positions.review),
                        (&self.settings.completed_topic, positions.completed),
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
        for (partition, inputs) in by_partition {
            debug!(
                partition,
                records = inputs.len(),
                "records for a partition without a task; ignored"
            );
        }
        self.metrics.reviews_pending.set(self.pending() as i64);
        Ok(())
    }
}
