//! Why the joiner could not start or had to stop ([`JoinError`]).

/// Why the joiner could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "the review topic {review} has {review_partitions} partitions but the completed topic \
         {completed} has {completed_partitions}: they must be co-partitioned (same partition \
         count, records keyed by id)"
    )]
    NotCoPartitioned {
        review: String,
        review_partitions: usize,
        completed: String,
        completed_partitions: usize,
    },
    #[error(
        "the joiner's state topic {topic} has {found} partitions but the input topics have \
         {expected}; recreate it (compacted, {expected} partitions) or use another join.group_id"
    )]
    StatePartitions {
        topic: String,
        found: usize,
        expected: usize,
    },
    #[error("missing topics: {}; create them or set kafka.create_topics = true", .0.join(", "))]
    MissingTopics(Vec<String>),
    #[error("cannot create topics: {0}")]
    CreateTopics(String),
    /// The topics could not be listed (e.g. the brokers are unreachable).
    #[error(transparent)]
    Topics(crate::kafka::KafkaError),
    #[error("restoring the joiner's state: {0}")]
    Restore(String),
    #[error("the joiner's state topic holds a record it cannot read: {0}")]
    Corrupt(String),
    #[error("the joiner thread ended without a result")]
    Crashed,
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
}
