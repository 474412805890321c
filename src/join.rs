//! The review joiner: reviewers' answers from the completed topic joined with their review
//! records into exactly one retraining record per reviewed item (`reviewloop join`).
//!
//! # Design
//!
//! **Inputs are co-partitioned.** Review and completed records are keyed by id and the two
//! topics have the same partition count, so partition *p* of both holds everything about the
//! ids hashed to *p*. The joiner checks the counts at startup and refuses to run when they
//! differ. Members of the consumer group use the range assignor, which hands one member the
//! same partition of both topics; each assigned partition is an independent *task*.
//!
//! **Exactly once: read, process, write in one transaction.** Each task has its own
//! transactional producer. One transaction carries the task's retraining records and dead
//! letters, its state changes (below), its input positions, and the consumed offsets
//! (`send_offsets_to_transaction` with the consumer's group metadata, so a member that lost
//! its generation cannot commit). Consumers of the output read with
//! `isolation.level=read_committed` and see each item's record once, or not at all.
//!
//! **Zombies are fenced by transactional id.** A task's transactional id is
//! `<group_id>-join-<partition>`, the same whichever process owns the partition. The new owner
//! initialises it before reading anything, and the broker then aborts the previous owner's
//! open transaction and rejects anything more from it: a joiner killed with SIGKILL
//! mid-transaction leaves nothing committed, and its successor does not wait for a
//! transaction timeout. (KIP-447 would allow one producer per process, but it relies on the
//! broker honouring `require_stable` offset fetches to wait out a zombie's transaction, which
//! not every Kafka-compatible broker does; per-partition ids fence on any broker that
//! implements transactions at all.)
//!
//! **State lives in Kafka, in a compacted changelog.** The state topic
//! `<group_id>-state` (created at startup, one partition per input partition, compacted) holds
//! one record per id, keyed `i:<id>`: the review record's offset and timestamp, the answers
//! so far, or a close mark once the item is done; a tombstone when it is forgotten. Its key `p`
//! holds the partition's input positions. Both are written in the same transaction as the
//! outputs, so a restored task is exactly the state after its last committed transaction:
//! on assignment the task reads its changelog partition to the end (the producer is
//! initialised first, so no transaction is open on it) and resumes the inputs at the stored
//! positions. This was chosen over re-reading the inputs from a committed low-watermark
//! because reviews wait for days: a restart would re-read days of megabyte payloads, while the
//! changelog is compacted to one small record per pending id. Positions are kept in the
//! changelog rather than only in the group's committed offsets so that state and positions
//! can never disagree, whatever the broker does with transactional offset commits.
//!
//! **Memory per pending review is an index entry.** The state keeps where the review record
//! is (offset, timestamp), never its payload; when the last answer arrives the payload is
//! read back by offset (records read in the same batch are used directly).
//!
//! **Time.** Deadlines come from record timestamps: `review_timeout` from the review record's,
//! `orphan_timeout` from an early answer's. A deadline passes when the topic that could still
//! save the item has been read past it: the wall clock once that topic-partition is caught
//! up, else the newest record timestamp read from it. A joiner catching up on a backlog
//! therefore does not expire items whose answers are in the backlog.
//!
//! **Outcomes.** Per id, one answer per reviewer counts (`duplicate` otherwise, also for
//! answers after the item is done — a double submit never becomes an orphan). With
//! `reviewers_per_item` answers and the review record, the answers are consolidated
//! (`majority`: more than half equal; `unanimous`: all equal; compared as JSON values) into a
//! retraining record with the label and the agreeing fraction, or a dead letter
//! `no_agreement`. Dead letters `expired` and `no_agreement` point at the review record,
//! `orphan` at the first answer, and carry the answers as payload; `invalid` carries the
//! original bytes (at most 64 KiB of them; the source offset has the rest). A bad record never
//! stalls its partition.
//!
//! Answers must be produced keyed by id with the same partitioner as the review topic
//! (librdkafka's default, or `partitioner = "murmur2_random"` in `[kafka.options]` when
//! reviewers' tools use the Java client), or they land on another partition and end as orphans.
//!
//! # Layout
//!
//! Pure, no I/O and no clock: [`answer`] reads input records, [`state`] is one partition's
//! join state, `render` turns an effect or an invalid input into the record to write. With
//! Kafka: `clients` makes the consumer, the reader and the transactional producers,
//! `changelog` writes and restores the state topic and fetches review records by offset,
//! `txn` is one partition's transaction (plan and finish are pure; fetch and commit touch
//! Kafka), and `runner` is the poll loop, the rebalance callback and the tasks' lifecycle.

mod accuracy;
pub mod answer;
mod changelog;
mod clients;
mod config;
mod error;
mod render;
mod runner;
pub mod state;
mod txn;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use self::clients::state_topic_name;
pub use self::config::{Agreement, JoinConfig};
pub use self::error::JoinError;

use crate::kafka::{KafkaConfig, KafkaError, TopicAdmin, TopicSpec};
use crate::metrics::Metrics;

/// How long startup waits on each admin round trip.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one joiner process until `shutdown` resolves (then finishes the open transaction and
/// leaves the group).
pub async fn run(
    join: &JoinConfig,
    kafka: &KafkaConfig,
    bootstrap: &str,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), JoinError> {
    let settings = clients::Settings::new(join, kafka, bootstrap);
    prepare_topics(&settings).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    let thread_stop = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("reviewloop-join".into())
        .spawn(move || {
            let result = runner::run_blocking(settings, metrics, &thread_stop);
            let _ = done_tx.send(result);
        })
        .map_err(|e| JoinError::Restore(format!("cannot start the joiner thread: {e}")))?;
    let shutdown = std::pin::pin!(shutdown);
    tokio::select! {
        result = &mut done_rx => return result.unwrap_or(Err(JoinError::Crashed)),
        () = shutdown => stop.store(true, Ordering::SeqCst),
    }
    done_rx.await.unwrap_or(Err(JoinError::Crashed))
}

/// Checks that the inputs are co-partitioned and that the outputs exist, and creates the
/// state topic (compacted, one partition per input partition) when it is missing.
async fn prepare_topics(settings: &clients::Settings) -> Result<(), JoinError> {
    let kafka = &settings.kafka;
    let admin = TopicAdmin::new(
        kafka,
        &settings.bootstrap,
        "reviewloop-join-admin",
        ADMIN_TIMEOUT,
    )
    .map_err(topics_error)?;
    let listed = admin.partition_counts().await.map_err(topics_error)?;
    let partitions = |name: &str| listed.get(name).copied();
    let mut missing: Vec<String> = Vec::new();
    for name in [
        &settings.review_topic,
        &settings.completed_topic,
        &settings.retraining_topic,
        &settings.dead_letter_topic,
    ] {
        if partitions(name).is_none() && !missing.contains(name) {
            missing.push(name.clone());
        }
    }
    if !missing.is_empty() && !kafka.create_topics {
        return Err(JoinError::MissingTopics(missing));
    }
    let mut create: Vec<TopicSpec> = missing
        .iter()
        .map(|name| TopicSpec::new(name, kafka.topic_partitions, kafka.topic_replication))
        .collect();
    let review = partitions(&settings.review_topic).unwrap_or(kafka.topic_partitions as usize);
    let completed =
        partitions(&settings.completed_topic).unwrap_or(kafka.topic_partitions as usize);
    if review != completed {
        return Err(JoinError::NotCoPartitioned {
            review: settings.review_topic.clone(),
            review_partitions: review,
            completed: settings.completed_topic.clone(),
            completed_partitions: completed,
        });
    }
    match partitions(&settings.state_topic) {
        Some(found) if found != review => {
            return Err(JoinError::StatePartitions {
                topic: settings.state_topic.clone(),
                found,
                expected: review,
            });
        }
        Some(_) => {}
        None => create.push(
            TopicSpec::new(
                &settings.state_topic,
                review as i32,
                kafka.topic_replication,
            )
            .with("cleanup.policy", "compact"),
        ),
    }
    admin.create(&create).await.map_err(topics_error)?;
    Ok(())
}

/// A refusal to create keeps the joiner's own wording; anything else says what failed.
fn topics_error(error: KafkaError) -> JoinError {
    match error {
        KafkaError::CreateTopics(refused) => JoinError::CreateTopics(refused.join(", ")),
        other => JoinError::Topics(other),
    }
}
