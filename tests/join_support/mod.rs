//! Helpers for the joiner's suites (mock cluster and real broker): a cluster with its topic
//! names, a running joiner, producers for review records and answers, a `read_committed`
//! reader, and schema validation of what the joiner wrote.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reviewloop::config::{Agreement, Config};
use reviewloop::join::{self, JoinError};
use reviewloop::metrics::Metrics;
use reviewloop::record::{ModelInfo, ReviewRecord, rfc3339_millis};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

// The review-record builder the Kafka suites use.
#[path = "../kafka_support/mod.rs"]
pub mod kafka_support;

pub const PARTITIONS: i32 = 3;

/// A broker and the topic names one test uses.
pub struct Cluster {
    pub bootstrap: String,
    pub prefix: String,
    /// Keeps the mock cluster alive (none for a real broker).
    _embedded: Option<reviewloop::kafka::EmbeddedBroker>,
}

impl Cluster {
    /// librdkafka's mock cluster with every topic of `config(..)` created (it has no
    /// CreateTopics), `PARTITIONS` partitions each.
    pub fn mock() -> Cluster {
        let prefix = "t".to_string();
        let config = base_config("", &prefix);
        let state = join::state_topic_name(&config.join.group_id);
        let topics = [
            config.kafka.review_topic.as_str(),
            config.kafka.completed_topic.as_str(),
            config.kafka.retraining_topic.as_str(),
            config.kafka.dead_letter_topic.as_str(),
            state.as_str(),
        ];
        let embedded = reviewloop::kafka::EmbeddedBroker::start(&topics, PARTITIONS)
            .expect("mock cluster starts");
        Cluster {
            bootstrap: embedded.bootstrap_servers().to_owned(),
            prefix,
            _embedded: Some(embedded),
        }
    }

    /// The broker at `KAFKA_BOOTSTRAP`, with topics of a fresh prefix created (the joiner
    /// creates its own state topic).
    pub async fn real() -> Cluster {
        let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
            panic!(
                "this test needs a real broker: start one with `export $(scripts/kafka-broker start)` \
                 and set KAFKA_BOOTSTRAP"
            )
        });
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let cluster = Cluster {
            bootstrap,
            prefix,
            _embedded: None,
        };
        let config = cluster.config();
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &cluster.bootstrap)
            .create()
            .expect("admin client");
        let topics: Vec<NewTopic<'_>> = [
            &config.kafka.review_topic,
            &config.kafka.completed_topic,
            &config.kafka.retraining_topic,
            &config.kafka.dead_letter_topic,
        ]
        .into_iter()
        .map(|name| NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
        for result in admin
            .create_topics(&topics, &AdminOptions::new())
            .await
            .expect("create topics")
        {
            result.expect("topic created");
        }
        cluster
    }

    pub fn is_mock(&self) -> bool {
        self._embedded.is_some()
    }

    /// A configuration for this cluster's topics: one reviewer per item, majority.
    pub fn config(&self) -> Config {
        base_config(&self.bootstrap, &self.prefix)
    }

    pub fn producer(&self) -> TestProducer {
        TestProducer::new(&self.bootstrap)
    }
}

fn base_config(bootstrap: &str, prefix: &str) -> Config {
    let mut config = Config::default();
    config.kafka.brokers = bootstrap.to_owned();
    config.kafka.review_topic = format!("{prefix}.review");
    config.kafka.completed_topic = format!("{prefix}.completed");
    config.kafka.retraining_topic = format!("{prefix}.retraining");
    config.kafka.dead_letter_topic = format!("{prefix}.dead-letter");
    config.kafka.topic_partitions = PARTITIONS;
    config.kafka.topic_replication = 1;
    // Quick group changes in tests: a stopped joiner's partitions move within seconds.
    config
        .kafka
        .options
        .insert("session.timeout.ms".into(), "6000".into());
    config
        .kafka
        .options
        .insert("heartbeat.interval.ms".into(), "500".into());
    config.join.group_id = format!("{prefix}-join");
    config.join.reviewers_per_item = 1;
    config.join.agreement = Agreement::Majority;
    config
}

/// A joiner running in this process until stopped.
pub struct Joiner {
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), JoinError>>,
}

/// Logs to the test's output when `RUST_LOG` is set (e.g. `RUST_LOG=reviewloop=debug`).
pub fn init_tracing() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .with_ansi(false)
                .try_init();
        }
    });
}

impl Joiner {
    pub fn start(config: &Config) -> Joiner {
        init_tracing();
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let config = config.clone();
        let task_metrics = Arc::clone(&metrics);
        let task = tokio::spawn(async move {
            let bootstrap = config.kafka.brokers.clone();
            join::run(
                &config.join,
                &config.kafka,
                &bootstrap,
                task_metrics,
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        Joiner {
            metrics,
            stop: Some(stop),
            task,
        }
    }

    /// Stops it gracefully and returns how it ended.
    pub async fn stop(mut self) -> Result<(), JoinError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("the joiner stops within 60 s")
            .expect("the joiner task does not panic")
    }

    /// A counter's value from the joiner's metrics text, e.g.
    /// `reviewloop_join_answers_total{outcome="duplicate"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric(&self.metrics, series)
    }
}

pub fn metric(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// A plain (non-transactional) producer keyed by id, like the proxy and reviewers' tools.
pub struct TestProducer {
    producer: BaseProducer,
}

impl TestProducer {
    pub fn new(bootstrap: &str) -> TestProducer {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("message.max.bytes", "3000000")
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        TestProducer { producer }
    }

    pub fn send(&self, topic: &str, key: Option<&str>, payload: &[u8]) {
        let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        let mut record = record;
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "produce failed: {e}"
                    );
                    record = back;
                    self.producer.poll(Duration::from_millis(20));
                }
            }
        }
        self.producer.poll(Duration::ZERO);
    }

    /// Sends to `topic` at an explicit partition (for garbage without a key).
    pub fn send_to_partition(&self, topic: &str, partition: i32, payload: &[u8]) {
        self.producer
            .send(
                BaseRecord::<'_, str, [u8]>::to(topic)
                    .partition(partition)
                    .payload(payload),
            )
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    pub fn review(&self, config: &Config, record: &ReviewRecord) {
        let value = serde_json::to_vec(record).unwrap();
        self.send(&config.kafka.review_topic, Some(&record.id), &value);
    }

    pub fn answer(&self, config: &Config, id: &str, reviewer: &str, label: &str) {
        let value = json!({
            "id": id,
            "reviewer": reviewer,
            "answer": {"label": label},
            "submitted_at": rfc3339_millis(SystemTime::now()),
            "time_spent_seconds": 3.5,
        });
        self.send(
            &config.kafka.completed_topic,
            Some(id),
            value.to_string().as_bytes(),
        );
    }

    pub fn flush(&self) {
        self.producer
            .flush(Duration::from_secs(30))
            .expect("flushed");
    }
}

/// A review record like the proxy writes, with a request body that says its id.
pub fn review_record(id: &str) -> ReviewRecord {
    let body = format!(r#"{{"inputs":"request {id}"}}"#);
    kafka_support::record_with_model(
        id,
        "application/json",
        body.as_bytes(),
        ModelInfo::default(),
    )
}

/// A deterministic shuffle (no RNG crate needed): the same `seed` gives the same order.
pub fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for i in (1..items.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let j = (state >> 33) as usize % (i + 1);
        items.swap(i, j);
    }
}

/// Every committed record of a topic, read with `isolation.level=read_committed`.
pub struct Reader {
    consumer: BaseConsumer,
    pub records: Vec<Value>,
}

impl Reader {
    pub fn new(bootstrap: &str, topic: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "test-reader")
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("reader");
        let mut assignment = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).expect("assign");
        Reader {
            consumer,
            records: Vec::new(),
        }
    }

    /// Reads until `done(records)` holds or `timeout` passes; returns whether it held.
    pub fn read_until(&mut self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.records) {
                return true;
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    let value = serde_json::from_slice(message.payload().unwrap_or_default())
                        .expect("the joiner writes JSON");
                    self.records.push(value);
                }
                Some(Err(e)) => eprintln!("reader: {e}"),
                None => {}
            }
        }
        done(&self.records)
    }

    /// Reads whatever else arrives within `quiet`.
    pub fn drain(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while Instant::now() < deadline {
            if let Some(Ok(message)) = self.consumer.poll(Duration::from_millis(100)) {
                self.records
                    .push(serde_json::from_slice(message.payload().unwrap_or_default()).unwrap());
            }
        }
    }

    /// How many records each `id` has.
    pub fn counts_by_id(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for record in &self.records {
            let id = record["id"].as_str().unwrap_or("<none>").to_owned();
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }
}

/// A compiled JSON Schema from `schemas/`.
pub struct Schema(jsonschema::Validator);

impl Schema {
    pub fn load(name: &str) -> Schema {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas")
            .join(name);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text).unwrap();
        Schema(jsonschema::validator_for(&schema).expect("valid schema"))
    }

    pub fn assert_valid(&self, value: &Value) {
        let errors: Vec<String> = self.0.iter_errors(value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\nin {value:#}");
    }
}

/// Ids with more than one record.
pub fn duplicates(counts: &BTreeMap<String, usize>) -> HashMap<String, usize> {
    counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (id.clone(), *n))
        .collect()
}

#[path = "scenarios.rs"]
pub mod scenarios;
