//! Helpers shared by the Kafka test suites: records with every kind of body, a consumer that
//! reads a topic from the beginning, schema validation, and metric readers.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reviewloop::config::KafkaConfig;
use reviewloop::metrics::Metrics;
use reviewloop::record::{
    ModelInfo, Payload, Reason, ResponsePayload, ReviewRecord, rfc3339_millis,
};
use serde_json::Value;

/// A review record whose request body is `body` with `content_type`, from model `model-a`.
pub fn record_with(id: &str, content_type: &str, body: &[u8]) -> ReviewRecord {
    let model = ModelInfo {
        target_model: Some("model-a.tar.gz".into()),
        variant: None,
    };
    record_with_model(id, content_type, body, model)
}

/// A low-confidence review record like the proxy writes: request body `body` with
/// `content_type`, a Hugging Face answer of confidence 0.42, `model` as given.
pub fn record_with_model(
    id: &str,
    content_type: &str,
    body: &[u8],
    model: ModelInfo,
) -> ReviewRecord {
    ReviewRecord {
        id: id.to_owned(),
        time: rfc3339_millis(SystemTime::now()),
        route: "/invocations".into(),
        request: Payload::from_bytes(Some(content_type), body),
        response: ResponsePayload {
            status: 200,
            payload: Payload::from_bytes(
                Some("application/json"),
                br#"[{"label":"cat","score":0.42}]"#,
            ),
        },
        confidence: Some(0.42),
        reasons: vec![Reason::LowConfidence],
        sample_percent: 1.0,
        conditions: Vec::new(),
        model,
        truncated: false,
        traceparent: None,
        redaction: None,
    }
}

/// The `i`th record of a mixed stream: JSON, text and binary bodies in turn.
pub fn mixed_record(prefix: &str, i: usize) -> (ReviewRecord, Vec<u8>) {
    let id = format!("{prefix}-{i:06}");
    let body: Vec<u8> = match i % 3 {
        0 => format!(r#"{{"inputs":"text number {i}","n":{i}}}"#).into_bytes(),
        1 => format!("plain text ünïcode line {i}\n").into_bytes(),
        _ => (0..64u32)
            .map(|b| (b as usize * 37 + i) as u8 | 0x80)
            .collect(),
    };
    let content_type = match i % 3 {
        0 => "application/json",
        1 => "text/plain; charset=utf-8",
        _ => "application/x-image",
    };
    (record_with(&id, content_type, &body), body)
}

/// A record with a request body of about `size` bytes of JSON text.
pub fn sized_record(id: &str, size: usize) -> ReviewRecord {
    let text = "x".repeat(size.saturating_sub(16));
    record_with(
        id,
        "application/json",
        format!(r#"{{"inputs":"{text}"}}"#).as_bytes(),
    )
}

/// A `[kafka]` section for tests: the given review topic, small timeouts.
pub fn kafka_config(review_topic: &str) -> KafkaConfig {
    KafkaConfig {
        review_topic: review_topic.to_owned(),
        ack_timeout: Duration::from_secs(5),
        ..KafkaConfig::default()
    }
}

/// Reads `topic` from the beginning of every partition until `want` messages arrived or
/// `deadline` passed; returns what it read.
pub fn consume(bootstrap: &str, topic: &str, want: usize, deadline: Duration) -> Vec<OwnedMessage> {
    consume_until(bootstrap, topic, deadline, |read| read.len() >= want)
}

/// Reads `topic` from the beginning of every partition until `done(what was read)` or
/// `deadline`; returns what it read.
pub fn consume_until(
    bootstrap: &str,
    topic: &str,
    deadline: Duration,
    mut done: impl FnMut(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("test-reader-{}", uuid::Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let partitions = metadata.topics()[0].partitions().len() as i32;
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let end = Instant::now() + deadline;
    let mut out = Vec::new();
    while !done(&out) && Instant::now() < end {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => out.push(message.detach()),
            Some(Err(e)) => eprintln!("consumer error (retrying): {e}"),
            None => {}
        }
    }
    out
}

pub fn header<'a>(message: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| std::str::from_utf8(v).expect("UTF-8 header"))
}

pub fn key(message: &OwnedMessage) -> &str {
    std::str::from_utf8(message.key().expect("a key")).expect("UTF-8 key")
}

/// A validator for `schemas/<name>.schema.json`, checking `format` too (date-time…).
pub fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name} schema does not compile: {e}"))
}

/// Every validation error of `value`, as text (empty when valid).
pub fn schema_errors(validator: &jsonschema::Validator, value: &Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

pub fn delivered(metrics: &Metrics, topic: &str) -> u64 {
    metrics
        .kafka_messages_total
        .with_label_values(&[topic, "delivered"])
        .get()
}

pub fn failed(metrics: &Metrics, topic: &str) -> u64 {
    metrics
        .kafka_messages_total
        .with_label_values(&[topic, "failed"])
        .get()
}

pub fn skipped(metrics: &Metrics, reason: &str) -> u64 {
    metrics
        .reviews_skipped_total
        .with_label_values(&[reason])
        .get()
}

/// Waits until `done()` or `deadline`; returns whether `done()` became true.
pub async fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

pub fn new_metrics() -> Arc<Metrics> {
    Arc::new(Metrics::new())
}

/// Checks a consumed review message against what was sent: key, headers, schema, round trip.
pub fn check_review_message(
    message: &OwnedMessage,
    sent: &BTreeMap<String, (ReviewRecord, Vec<u8>)>,
    validator: &jsonschema::Validator,
) {
    let id = key(message).to_owned();
    let (record, body) = sent
        .get(&id)
        .unwrap_or_else(|| panic!("unexpected key {id}"));
    let value: Value = serde_json::from_slice(message.payload().expect("a value")).expect("JSON");
    let errors = schema_errors(validator, &value);
    assert!(
        errors.is_empty(),
        "record {id} breaks the schema: {errors:?}"
    );
    let back: ReviewRecord = serde_json::from_value(value).expect("reads back as a ReviewRecord");
    assert_eq!(&back, record, "record {id} round-trips");
    let bytes = back.request.to_bytes().expect("body decodes");
    if back.request.encoding == reviewloop::record::Encoding::Json {
        let original: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&bytes).unwrap(), original);
    } else {
        assert_eq!(&bytes, body, "record {id} body round-trips byte for byte");
    }
    assert_eq!(header(message, "ce_specversion"), Some("1.0"));
    assert_eq!(
        header(message, "ce_type"),
        Some("reviewloop.review.requested")
    );
    assert_eq!(header(message, "ce_source"), Some("reviewloop"));
    assert_eq!(header(message, "ce_time"), Some(record.time.as_str()));
    assert_eq!(header(message, "content-type"), Some("application/json"));
    let ce_id = header(message, "ce_id").expect("ce_id");
    assert!(!ce_id.is_empty());
}

/// The real broker's address from `KAFKA_BOOTSTRAP`; panics saying how to get one.
pub fn real_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!(
            "this test needs a real Kafka broker: run `export $(scripts/kafka-broker start)` \
             (or set KAFKA_BOOTSTRAP=host:port of any Kafka broker) and pass --ignored"
        )
    })
}

/// A topic name of its own for one test run, so runs never see each other's records.
pub fn unique_topic(name: &str) -> String {
    format!("test.{name}.{}", uuid::Uuid::now_v7().simple())
}

/// `scripts/kafka-broker`'s state directory (where its pid and port files are).
pub fn broker_state_dir() -> std::path::PathBuf {
    std::env::var_os("REVIEWLOOP_BROKER_DIR")
        .map(Into::into)
        .unwrap_or_else(|| std::env::temp_dir().join("reviewloop-broker"))
}

/// Held for a test's duration: shared by tests that only use the broker, exclusive for tests
/// that stop it, so test processes running in parallel never see another test's outage.
pub struct BrokerLock(std::fs::File);

impl BrokerLock {
    fn open() -> std::fs::File {
        let dir = broker_state_dir();
        std::fs::create_dir_all(&dir).expect("broker state dir");
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("tests.lock"))
            .expect("lock file")
    }

    pub fn shared() -> BrokerLock {
        let file = Self::open();
        file.lock_shared().expect("shared lock");
        BrokerLock(file)
    }

    pub fn exclusive() -> BrokerLock {
        let file = Self::open();
        file.lock().expect("exclusive lock");
        BrokerLock(file)
    }
}

/// Runs `scripts/kafka-broker <command>` (with `KAFKA_BOOTSTRAP` unset, so `start` really
/// starts) and returns its standard output.
pub fn broker_script(command: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker");
    let output = std::process::Command::new(script)
        .arg(command)
        .env_remove("KAFKA_BOOTSTRAP")
        .output()
        .expect("scripts/kafka-broker runs");
    assert!(
        output.status.success(),
        "scripts/kafka-broker {command} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// Panics unless `bootstrap` is the broker `scripts/kafka-broker` started (a test that crashes
/// and restarts the broker cannot do that to someone else's).
pub fn assert_script_broker(bootstrap: &str) {
    let status = std::process::Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka-broker"),
    )
    .arg("status")
    .output()
    .expect("scripts/kafka-broker runs");
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && shown.trim() == format!("KAFKA_BOOTSTRAP={bootstrap}"),
        "this test kills and restarts the broker, so KAFKA_BOOTSTRAP must be the broker \
         `scripts/kafka-broker start` started (status says {shown:?})"
    );
}
