//! `[kafka]`: the brokers, the four topics, how review records are delivered, and the
//! librdkafka options passed through.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Problem, duration, quoted, require, shown};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// The response never waits for Kafka.
    Async,
    /// A diverted response waits for the broker's ack.
    Sync,
}

/// librdkafka's upper bound for `queue.buffering.max.messages`.
const MAX_QUEUE_CAPACITY: usize = 2_147_483_647;

/// The value of `kafka.brokers` that starts an in-process broker.
pub const EMBEDDED_BROKERS: &str = "embedded";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub review_topic: String,
    pub completed_topic: String,
    pub retraining_topic: String,
    pub dead_letter_topic: String,
    pub delivery: Delivery,
    /// Review records not yet acked by the broker (queued, in flight or retried), at most;
    /// above it a record is skipped (`reviews_skipped_total{reason="queue_full"}`). Sets
    /// librdkafka's `queue.buffering.max.messages`; that option in `kafka.options` wins.
    pub queue_capacity: usize,
    /// `delivery = "sync"`: how long a response waits for the ack before it is sent anyway
    /// (the record stays queued and may still be delivered).
    #[serde(with = "duration")]
    pub ack_timeout: Duration,
    /// At startup, create whichever of the four topics is missing, with `topic_partitions` and
    /// `topic_replication`. Missing topics are an error either way when the broker refuses
    /// (no permission, or no CreateTopics support); the proxy logs it and keeps serving.
    /// On by default so that `reviewloop demo` and a fresh cluster work at once; turn it off
    /// where topics are provisioned by other means.
    pub create_topics: bool,
    /// Partitions of topics created at startup.
    pub topic_partitions: i32,
    /// Replication factor of topics created at startup; -1 takes the broker's default.
    pub topic_replication: i32,
    /// A directory where review records the producer cannot deliver wait on disk, across
    /// outages and restarts, until they are replayed (see `kafka/spool.rs`). Off when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<PathBuf>,
    /// The spool's size limit; past it a record is skipped (`reason="spool_full"`).
    pub spool_max_bytes: u64,
    /// How often spooled records are fsynced: a power loss (not a crash) can cost the records
    /// spooled in the last interval. 0 syncs after every record.
    #[serde(with = "duration")]
    pub spool_fsync_interval: Duration,
    /// With a spool: how long the broker may be unreachable before new records go straight to
    /// disk; also librdkafka's `message.timeout.ms` (a record older than this in the producer's
    /// queue is spooled), unless `[kafka.options]` sets that.
    #[serde(with = "duration")]
    pub spool_after: Duration,
    /// librdkafka properties, passed verbatim; they override reviewloop's defaults.
    pub options: BTreeMap<String, String>,
}

/// The smallest `kafka.spool_max_bytes` (a record larger than the room left is skipped as
/// `spool_full`).
const MIN_SPOOL_BYTES: u64 = 64 * 1024;

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            review_topic: "reviewloop.review".into(),
            completed_topic: "reviewloop.completed".into(),
            retraining_topic: "reviewloop.retraining".into(),
            dead_letter_topic: "reviewloop.dead-letter".into(),
            delivery: Delivery::Async,
            // librdkafka's default queue.buffering.max.messages.
            queue_capacity: 100_000,
            ack_timeout: Duration::from_secs(5),
            create_topics: true,
            topic_partitions: 3,
            topic_replication: -1,
            spool_dir: None,
            // 1 GiB: about an hour of 100 records/s of 3 KB each (README, "Spool").
            spool_max_bytes: 1 << 30,
            // One second of spooled records at risk on a power loss, one fsync a second.
            spool_fsync_interval: Duration::from_secs(1),
            // Long enough for a broker restart or a leader election, short enough that little
            // sits in memory when the process is killed.
            spool_after: Duration::from_secs(30),
            options: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn is_embedded(&self) -> bool {
        self.brokers == EMBEDDED_BROKERS
    }
}

impl KafkaConfig {
    /// Every problem with the values, keys relative to `[kafka]`.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push(Problem::new(
                "brokers",
                quoted(&self.brokers),
                "must list host:port pairs, or be \"embedded\"",
            ));
        }
        for (key, topic) in [
            ("review_topic", &self.review_topic),
            ("completed_topic", &self.completed_topic),
            ("retraining_topic", &self.retraining_topic),
            ("dead_letter_topic", &self.dead_letter_topic),
        ] {
            if let Err(message) = check_topic_name(topic) {
                problems.push(Problem::new(key, quoted(topic), message));
            }
        }
        require(
            &mut problems,
            (1..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity),
            "queue_capacity",
            self.queue_capacity.to_string(),
            "must be between 1 and 2147483647 (librdkafka's queue.buffering.max.messages)",
        );
        require(
            &mut problems,
            !self.ack_timeout.is_zero(),
            "ack_timeout",
            shown(self.ack_timeout),
            "must be positive",
        );
        require(
            &mut problems,
            self.topic_partitions >= 1,
            "topic_partitions",
            self.topic_partitions.to_string(),
            "must be at least 1",
        );
        require(
            &mut problems,
            self.topic_replication == -1 || self.topic_replication >= 1,
            "topic_replication",
            self.topic_replication.to_string(),
            "must be -1 (broker default) or at least 1",
        );
        if let Some(dir) = &self.spool_dir {
            require(
                &mut problems,
                !dir.as_os_str().is_empty(),
                "spool_dir",
                quoted(&dir.display().to_string()),
                "must name a directory (leave it unset for no spool)",
            );
        }
        require(
            &mut problems,
            self.spool_max_bytes >= MIN_SPOOL_BYTES,
            "spool_max_bytes",
            self.spool_max_bytes.to_string(),
            "must be at least 65536 (64 KiB)",
        );
        require(
            &mut problems,
            !self.spool_after.is_zero(),
            "spool_after",
            shown(self.spool_after),
            "must be positive",
        );
        problems
    }
}

/// Kafka's rule for topic names.
pub fn check_topic_name(topic: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || !topic.chars().all(valid) {
        return Err("Kafka topic names are 1–249 characters of [a-zA-Z0-9._-]".into());
    }
    Ok(())
}

/// librdkafka properties whose values must never be printed or logged.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.ends_with(".pem")
}
