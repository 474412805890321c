//! The console's Kafka side: the queue rebuilt from the review and completed topics at start
//! and kept current by following them, and answers published with the broker's ack.
//!
//! Every instance reads every partition of both topics from the beginning (no consumer group,
//! nothing committed): the queue is a function of the topics, so a restarted console loses no
//! open item and shows no answered one, and several instances all see every answer.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::metrics::{ConsoleMetrics, Input};
use super::queue::Queue;
use crate::join::answer::{parse_completed, parse_review};
use crate::kafka::{
    KafkaConfig, KafkaError, ReaderContext, client_config,
};

/// How long one metadata or watermark request may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the feed expires items and refreshes the gauges (and checks its progress while
/// catching up).
const TICK: Duration = Duration::from_millis(250);

/// The queue and how far the feed has read, shared with the web server.
pub struct Shared {
    pub queue: Mutex<Queue<Bytes>>,
    /// Both topics were read to where they ended when the console started.
    caught_up: AtomicBool,
    records_read: AtomicU64,
}

impl Shared {
    pub fn new(queue: Queue<Bytes>) -> Shared {
        Shared {
            queue: Mutex::new(queue),
            caught_up: AtomicBool::new(false),
            records_read: AtomicU64::new(0),
        }
    }

    /// Whether the queue is complete enough to serve: before that, an answered item could
    /// still look open.
    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    pub fn records_read(&self) -> u64 {
        self.records_read.load(Ordering::Relaxed)
    }
}

/// One input topic, read by its own consumer so that its end-of-partition events name it.
struct Reader {
    input: Input,
    topic: String,
    /// Partitions not yet read to where they ended at start, with that end offset.
    pending: HashMap<i32, i64>,
    /// When a read error was last logged (an outage would log one every retry otherwise).
    warned: Option<std::time::Instant>,
}

/// Read errors are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Reads both topics into `shared` until `shutdown`.
pub async fn follow(
    kafka: &KafkaConfig,
    bootstrap: &str,
    shared: Arc<Shared>,
    metrics: Arc<ConsoleMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), KafkaError> {
    tokio::pin!(shutdown);
    let ((review_consumer, mut reviews), (answer_consumer, mut answers)) = tokio::select! {
        readers = async {
            let reviews = Reader::start(kafka, bootstrap, Input::Review, &kafka.review_topic).await?;
            let answers = Reader::start(kafka, bootstrap, Input::Completed, &kafka.completed_topic).await?;
            Ok::<_, KafkaError>((reviews, answers))
        } => readers?,
        () = &mut shutdown => return Ok(()),
    };
    let started = std::time::Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = review_consumer.recv() => reviews.received(received, &shared, &metrics).await,
            received = answer_consumer.recv() => answers.received(received, &shared, &metrics).await,
            _ = ticker.tick() => {
                let now = SystemTime::now();
                let (open, leased) = {
                    let mut queue = shared.queue.lock().expect("queue lock");
                    queue.expire(now);
                    queue.counts(now)
                };
                metrics.set_items(open, leased);
                if !shared.is_caught_up() && reviews.read_to_start_end() && answers.read_to_start_end() {
                    shared.caught_up.store(true, Ordering::Release);
                    info!(
                        open,
                        records = shared.records_read(),
                        seconds = started.elapsed().as_secs_f64(),
                        "console queue rebuilt from Kafka"
                    );
                }
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

impl Reader {
    /// A consumer of every partition of `topic` from the beginning, once the topic exists
    /// (the proxy creates the topics; the console waits for them).
    async fn start(
        kafka: &KafkaConfig,
        bootstrap: &str,
        input: Input,
        topic: &str,
    ) -> Result<(StreamConsumer<ReaderContext>, Reader), KafkaError> {
        let client_id = format!("reviewloop-console-{}", input.as_str());
        let consumer: StreamConsumer<ReaderContext> = client_config(
            kafka,
            bootstrap,
            &[
                ("client.id", client_id.as_str()),
                // assign() wants a group id; this one never joins a group or commits.
                ("group.id", "reviewloop-console"),
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("enable.partition.eof", "true"),
                ("auto.offset.reset", "earliest"),
                ("isolation.level", "read_committed"),
                // New items and other instances' answers show up within this.
                ("fetch.wait.max.ms", "100"),
            ],
        )
        .create_with_context(ReaderContext::new("the console's reader"))
        .map_err(|e| KafkaError::Config(format!("cannot create the console's consumer: {e}")))?;
        let consumer = Arc::new(consumer);
        let mut warned = false;
        let ends = loop {
            let client = Arc::clone(&consumer);
            let name = topic.to_owned();
            let found = tokio::task::spawn_blocking(move || partition_ends(&client, &name))
                .await
                .map_err(|e| KafkaError::Config(format!("metadata task failed: {e}")))?;
            match found {
                Ok(ends) => break ends,
                Err(problem) => {
                    if !warned {
                        warn!(%problem, "the console waits for its topics");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut assignment = TopicPartitionList::new();
        for partition in ends.keys() {
            assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let pending = ends
            .into_iter()
            .filter(|(_, (low, high))| high > low)
            .map(|(partition, (_, high))| (partition, high))
            .collect();
        let consumer = Arc::into_inner(consumer).expect("the metadata task has ended");
        let reader = Reader {
            input,
            topic: topic.to_owned(),
            pending,
            warned: None,
        };
        Ok((consumer, reader))
    }

    async fn received(
        &mut self,
        received: Result<BorrowedMessage<'_>, RdKafkaError>,
        shared: &Shared,
        metrics: &ConsoleMetrics,
    ) {
        match received {
            Ok(message) => {
                take(&message, self.input, shared, metrics);
                let partition = message.partition();
                if self
                    .pending
                    .get(&partition)
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    self.pending.remove(&partition);
                }
            }
            // The end of a partition (also past transaction markers no message stands for).
            Err(RdKafkaError::PartitionEOF(partition)) => {
                self.pending.remove(&partition);
            }
            Err(e) => {
                if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warn!(topic = %self.topic, error = %e, "reading a console topic failed; retrying");
                    self.warned = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }

    /// Whether every partition was read up to where it ended when the console started.
    fn read_to_start_end(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Each partition of `topic` with its low and high watermarks.
fn partition_ends(
    consumer: &StreamConsumer<ReaderContext>,
    topic: &str,
) -> Result<HashMap<i32, (i64, i64)>, String> {
    // All topics are listed: asking for one by name makes a broker with auto-creation create
    // it with its default partition count.
    let metadata = consumer
        .fetch_metadata(None, METADATA_TIMEOUT)
        .map_err(|e| format!("cannot read the cluster's metadata: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {topic} does not exist (yet)"));
    }
    let mut ends = HashMap::new();
    for partition in partitions {
        let watermarks = consumer
            .fetch_watermarks(topic, partition, METADATA_TIMEOUT)
            .map_err(|e| format!("cannot read where {topic}/{partition} ends: {e}"))?;
        ends.insert(partition, watermarks);
    }
    Ok(ends)
}

/// One record of either topic into the queue.
fn take(message: &BorrowedMessage<'_>, input: Input, shared: &Shared, metrics: &ConsoleMetrics) {
    shared.records_read.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now();
    let at = message
        .timestamp()
        .to_millis()
        .and_then(|ms| u64::try_from(ms).ok())
        .map_or(now, |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
    let bytes = message.payload().unwrap_or_default();
    if input == Input::Review {
        match parse_review(bytes) {
            Ok(record) => {
                let payload = Bytes::copy_from_slice(bytes);
                let mut queue = shared.queue.lock().expect("queue lock");
                queue.offer(&record.id, &record.route, at, payload, now);
            }
            Err(invalid) => {
                metrics.invalid_record(Input::Review);
                debug!(partition = message.partition(), offset = message.offset(), detail = %invalid.detail, "unreadable review record skipped");
            }
        }
    } else {
        match parse_completed(bytes) {
            Ok((id, answers)) => {
                let mut queue = shared.queue.lock().expect("queue lock");
                for answer in answers {
                    queue.record_answer(&id, &answer.reviewer, at);
                }
            }
            Err(invalid) => {
                metrics.invalid_record(Input::Completed);
                debug!(partition = message.partition(), offset = message.offset(), detail = %invalid.detail, "unreadable answer skipped");
            }
        }
    }
}

