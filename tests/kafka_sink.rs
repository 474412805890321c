//! The review sink over librdkafka's mock cluster: records arrive whole and valid, an outage
//! never blocks a send, every record is accounted for, sync mode waits for the ack, shutdown
//! flushes, and the startup topic check says what is wrong.

mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_support::*;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use reviewloop::config::{Delivery, KafkaConfig};
use reviewloop::kafka::{self, EmbeddedBroker, KafkaError, ReviewSink, SinkError};
use reviewloop::record::Payload;

const TOPIC: &str = "reviewloop.review";
const PARTITIONS: i32 = 3;

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, PARTITIONS, 1).expect("topic");
    cluster
}

async fn ready(sink: &ReviewSink) {
    assert!(
        wait_until(Duration::from_secs(10), || sink.is_kafka_up()).await,
        "the sink never fetched metadata"
    );
}

#[tokio::test]
async fn every_record_arrives_keyed_valid_with_headers_and_round_trips() {
    let cluster = cluster();
    let metrics = new_metrics();
    let sink = ReviewSink::new(
        &kafka_config(TOPIC),
        &cluster.bootstrap_servers(),
        metrics.clone(),
    )
    .unwrap();
    let n = 300;
    let mut sent = BTreeMap::new();
    for i in 0..n {
        let (record, body) = mixed_record("r", i);
        sink.send(&record);
        sent.insert(record.id.clone(), (record, body));
    }
    assert_eq!(sink.flush(Duration::from_secs(10)).await, 0);
    assert_eq!(delivered(&metrics, TOPIC), n as u64);

    let messages = consume(
        &cluster.bootstrap_servers(),
        TOPIC,
        n,
        Duration::from_secs(20),
    );
    assert_eq!(messages.len(), n);
    let validator = schema("review");
    let mut seen = BTreeSet::new();
    for message in &messages {
        check_review_message(message, &sent, &validator);
        assert!(
            seen.insert(key(message).to_owned()),
            "duplicate {}",
            key(message)
        );
    }
    assert!(sink.is_kafka_up());
}

#[tokio::test]
async fn an_outage_never_blocks_a_send_and_the_queued_records_arrive_after_it() {
    let cluster = cluster();
    let metrics = new_metrics();
    let config = KafkaConfig {
        // Reconnect quickly once the broker is back, so the test does not wait on backoff.
        options: [("reconnect.backoff.max.ms".to_owned(), "200".to_owned())].into(),
        ..kafka_config(TOPIC)
    };
    let sink = ReviewSink::new(&config, &cluster.bootstrap_servers(), metrics.clone()).unwrap();
    ready(&sink).await;

    // A steady stream: 1 record per millisecond, the broker down for the middle second.
    let (total, down_at, up_at) = (3000, 1000, 2000);
    let mut slowest = Duration::ZERO;
    let mut send_times = Vec::with_capacity(total);
    let mut delivered_at_recovery = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    for i in 0..total {
        if i == down_at {
            cluster.broker_down(1).unwrap();
        }
        if i == up_at {
            delivered_at_recovery = delivered(&metrics, TOPIC);
            cluster.broker_up(1).unwrap();
        }
        ticker.tick().await;
        let record = sized_record(&format!("o-{i:05}"), 1024);
        let started = Instant::now();
        sink.send(&record);
        let took = started.elapsed();
        slowest = slowest.max(took);
        send_times.push(took);
    }
    send_times.sort();
    println!(
        "send() during an outage: p50 {:?}, p99 {:?}, max {:?} over {total} calls",
        send_times[total / 2],
        send_times[total * 99 / 100],
        slowest
    );
    assert!(
        delivered_at_recovery <= down_at as u64,
        "records sent while the broker was down cannot have been delivered ({delivered_at_recovery})"
    );
    assert_eq!(sink.flush(Duration::from_secs(30)).await, 0);
    assert_eq!(delivered(&metrics, TOPIC), total as u64);
    assert_eq!(
        skipped(&metrics, "queue_full") + skipped(&metrics, "kafka_error"),
        0
    );

    // Read until every id has been seen: a count of messages would let a duplicate hide a loss.
    let mut seen = BTreeSet::new();
    let messages = consume_until(
        &cluster.bootstrap_servers(),
        TOPIC,
        Duration::from_secs(20),
        |read| {
            if let Some(last) = read.last() {
                seen.insert(key(last).to_owned());
            }
            seen.len() >= total
        },
    );
    let ids: BTreeSet<&str> = messages.iter().map(key).collect();
    let lost: Vec<String> = (0..total)
        .map(|i| format!("o-{i:05}"))
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "records lost in the outage: {lost:?}");
    // The review topic is at-least-once. The idempotent producer removes the duplicates of
    // ordinary retries, but a batch the broker wrote just as it went down can be written again
    // after it comes back (seen in about one run in ten on a loaded machine, 3 records); the joiner
    // drops a repeated review record by id. A handful at the outage is that; more is a bug.
    let duplicated = messages.len() - ids.len();
    println!("{duplicated} of {total} records written twice across the outage");
    assert!(
        duplicated <= 50,
        "{duplicated} records written twice: more than one in-flight batch around the outage"
    );
}

#[tokio::test]
async fn a_queue_too_small_for_the_outage_skips_and_counts_every_record() {
    let cluster = cluster();
    let metrics = new_metrics();
    let config = KafkaConfig {
        queue_capacity: 50,
        options: [("reconnect.backoff.max.ms".to_owned(), "200".to_owned())].into(),
        ..kafka_config(TOPIC)
    };
    let sink = ReviewSink::new(&config, &cluster.bootstrap_servers(), metrics.clone()).unwrap();
    ready(&sink).await;

    cluster.broker_down(1).unwrap();
    let sent = 1000;
    for i in 0..sent {
        sink.send(&sized_record(&format!("q-{i:05}"), 1024));
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        sink.queued() <= 50,
        "the queue is bounded: {}",
        sink.queued()
    );
    cluster.broker_up(1).unwrap();
    assert_eq!(sink.flush(Duration::from_secs(30)).await, 0);

    let delivered = delivered(&metrics, TOPIC);
    let queue_full = skipped(&metrics, "queue_full");
    let kafka_error = skipped(&metrics, "kafka_error");
    println!(
        "sent {sent}: delivered {delivered}, queue_full {queue_full}, kafka_error {kafka_error}"
    );
    assert!(queue_full >= (sent - 50) as u64, "queue_full {queue_full}");
    assert_eq!(delivered + queue_full + kafka_error, sent as u64);
    let messages = consume(
        &cluster.bootstrap_servers(),
        TOPIC,
        delivered as usize + 1,
        Duration::from_secs(5),
    );
    assert_eq!(
        messages.len() as u64,
        delivered,
        "the topic holds what was counted delivered"
    );
}

#[tokio::test]
async fn sync_delivery_resolves_only_once_the_record_is_on_the_topic() {
    let cluster = cluster();
    let metrics = new_metrics();
    let config = KafkaConfig {
        delivery: Delivery::Sync,
        ack_timeout: Duration::from_secs(20),
        options: [("reconnect.backoff.max.ms".to_owned(), "100".to_owned())].into(),
        ..kafka_config(TOPIC)
    };
    let sink = ReviewSink::new(&config, &cluster.bootstrap_servers(), metrics.clone()).unwrap();
    ready(&sink).await;
    let validator = schema("review");
    for i in 0..3 {
        let (record, body) = mixed_record("s", i);
        let sent = BTreeMap::from([(record.id.clone(), (record.clone(), body))]);
        // No broker, no ack: the send must still be waiting.
        cluster.broker_down(1).unwrap();
        let mut acked = std::pin::pin!(sink.submit(&record));
        tokio::select! {
            outcome = &mut acked => panic!("resolved without a broker: {outcome:?}"),
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        cluster.broker_up(1).unwrap();
        acked.as_mut().await.expect("acked once the broker is back");
        // Read right after the ack, from a fresh consumer: the record is there already.
        let messages = consume(
            &cluster.bootstrap_servers(),
            TOPIC,
            i + 1,
            Duration::from_secs(10),
        );
        let found: Vec<_> = messages.iter().filter(|m| key(m) == record.id).collect();
        assert_eq!(
            found.len(),
            1,
            "record {} on the topic once acked",
            record.id
        );
        check_review_message(found[0], &sent, &validator);
    }
    assert_eq!(delivered(&metrics, TOPIC), 3);
}

#[tokio::test]
async fn sync_delivery_reports_a_timeout_and_a_failure_and_counts_them_once() {
    let cluster = cluster();
    let metrics = new_metrics();
    let config = KafkaConfig {
        delivery: Delivery::Sync,
        ack_timeout: Duration::from_millis(300),
        options: [
            ("reconnect.backoff.max.ms".to_owned(), "200".to_owned()),
            // Records fail for good after 1.5 s without the broker.
            ("message.timeout.ms".to_owned(), "1500".to_owned()),
        ]
        .into(),
        ..kafka_config(TOPIC)
    };
    let sink = ReviewSink::new(&config, &cluster.bootstrap_servers(), metrics.clone()).unwrap();
    ready(&sink).await;
    cluster.broker_down(1).unwrap();

    // The ack does not come in time: the caller hears so after ack_timeout, the record stays
    // queued, and its final outcome is counted once.
    let started = Instant::now();
    let outcome = sink.send_and_wait(&sized_record("t-1", 100)).await;
    assert!(
        matches!(outcome, Err(SinkError::AckTimeout(_))),
        "{outcome:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(sink.queued(), 1);

    // A record that waits longer than message.timeout.ms fails for good.
    let long = KafkaConfig {
        ack_timeout: Duration::from_secs(10),
        ..config.clone()
    };
    let patient = ReviewSink::new(&long, &cluster.bootstrap_servers(), metrics.clone()).unwrap();
    let outcome = patient.send_and_wait(&sized_record("t-2", 100)).await;
    match outcome {
        Err(SinkError::Kafka(e)) => assert!(e.to_string().contains("timed out"), "{e}"),
        other => panic!("expected a Kafka failure, got {other:?}"),
    }
    assert!(wait_until(Duration::from_secs(5), || sink.queued() == 0).await);
    assert_eq!(failed(&metrics, TOPIC), 2);
    assert_eq!(skipped(&metrics, "kafka_error"), 2);
    assert_eq!(delivered(&metrics, TOPIC), 0);
}

#[tokio::test]
async fn flush_on_shutdown_delivers_what_was_queued() {
    let cluster = cluster();
    let metrics = new_metrics();
    let sink = ReviewSink::new(
        &kafka_config(TOPIC),
        &cluster.bootstrap_servers(),
        metrics.clone(),
    )
    .unwrap();
    // Records handed over before the broker is even known: they wait in the queue.
    let n = 2000;
    for i in 0..n {
        sink.send(&sized_record(&format!("f-{i:05}"), 1024));
    }
    assert_eq!(sink.flush(Duration::from_secs(20)).await, 0);
    drop(sink);
    assert_eq!(delivered(&metrics, TOPIC), n as u64);
    let messages = consume(
        &cluster.bootstrap_servers(),
        TOPIC,
        n,
        Duration::from_secs(20),
    );
    assert_eq!(messages.len(), n);
}

#[tokio::test]
async fn flush_that_runs_out_of_time_counts_what_it_drops() {
    let cluster = cluster();
    let metrics = new_metrics();
    let sink = ReviewSink::new(
        &kafka_config(TOPIC),
        &cluster.bootstrap_servers(),
        metrics.clone(),
    )
    .unwrap();
    ready(&sink).await;
    cluster.broker_down(1).unwrap();
    for i in 0..100 {
        sink.send(&sized_record(&format!("d-{i:03}"), 100));
    }
    let left = sink.flush(Duration::from_millis(300)).await;
    assert_eq!(left, 100);
    assert_eq!(sink.queued(), 0);
    assert_eq!(skipped(&metrics, "kafka_error"), 100);
    assert_eq!(delivered(&metrics, TOPIC), 0);
}

#[tokio::test]
async fn an_unreachable_broker_leaves_the_sink_unready_but_never_blocks() {
    let metrics = new_metrics();
    // Port 1 on loopback: nothing listens, connections are refused.
    let sink = ReviewSink::new(&kafka_config(TOPIC), "127.0.0.1:1", metrics.clone()).unwrap();
    let started = Instant::now();
    for i in 0..1000 {
        sink.send(&sized_record(&format!("u-{i}"), 1024));
    }
    println!("1000 sends with no broker took {:?}", started.elapsed());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!sink.is_kafka_up());
    assert_eq!(sink.queued(), 1000, "records wait in the queue");
}

#[tokio::test]
async fn kafka_options_override_defaults_and_bad_ones_are_named() {
    let cluster = cluster();
    let metrics = new_metrics();
    let config = KafkaConfig {
        options: [
            ("enable.idempotence".to_owned(), "false".to_owned()),
            ("acks".to_owned(), "1".to_owned()),
        ]
        .into(),
        ..kafka_config(TOPIC)
    };
    let sink = ReviewSink::new(&config, &cluster.bootstrap_servers(), metrics.clone()).unwrap();
    sink.send(&sized_record("o-1", 10));
    assert_eq!(sink.flush(Duration::from_secs(10)).await, 0);
    assert_eq!(delivered(&metrics, TOPIC), 1);

    let bad = KafkaConfig {
        options: [("no.such.option".to_owned(), "1".to_owned())].into(),
        ..kafka_config(TOPIC)
    };
    let error = ReviewSink::new(&bad, &cluster.bootstrap_servers(), metrics)
        .err()
        .expect("an unknown librdkafka option is refused");
    assert!(error.to_string().contains("no.such.option"), "{error}");
}

#[tokio::test]
async fn a_record_larger_than_the_producer_allows_arrives_with_its_bodies_cut() {
    let cluster = cluster();
    let metrics = new_metrics();
    let config = KafkaConfig {
        delivery: Delivery::Sync,
        options: [("message.max.bytes".to_owned(), "10000".to_owned())].into(),
        ..kafka_config(TOPIC)
    };
    let sink = ReviewSink::new(&config, &cluster.bootstrap_servers(), metrics.clone()).unwrap();
    // A JSON body, and a binary one that travels as base64 (a third larger).
    let big = sized_record("big", 50_000);
    let binary: Vec<u8> = (0..40_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let big_binary = record_with("big-binary", "application/octet-stream", &binary);
    for record in [&big, &big_binary] {
        sink.send_and_wait(record).await.unwrap();
    }
    sink.send_and_wait(&sized_record("small", 100))
        .await
        .unwrap();
    assert_eq!(delivered(&metrics, TOPIC), 3);
    assert_eq!(skipped(&metrics, "kafka_error"), 0);

    let messages = consume(
        &cluster.bootstrap_servers(),
        TOPIC,
        3,
        Duration::from_secs(20),
    );
    assert_eq!(messages.len(), 3);
    let validator = schema("review");
    for message in &messages {
        let value: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        let errors = schema_errors(&validator, &value);
        assert!(errors.is_empty(), "{errors:?}");
        let original = match key(message) {
            "small" => {
                assert_eq!(value["truncated"], false);
                assert_eq!(value["request"]["encoding"], "json");
                continue;
            }
            "big" => big.request.to_bytes().unwrap(),
            _ => binary.clone(),
        };
        assert!(message.payload().unwrap().len() <= 10_000);
        assert_eq!(value["truncated"], true, "{}", key(message));
        // The request body is a good share of the original, and a prefix of it.
        let kept: Payload = serde_json::from_value(value["request"].clone()).unwrap();
        let kept = kept.to_bytes().unwrap();
        assert!(kept.len() > 2_000, "{} bytes kept", kept.len());
        assert_eq!(kept, original[..kept.len()]);
        // The small response body is untouched.
        assert_eq!(value["response"]["body"][0]["label"], "cat");
    }
}

#[tokio::test]
async fn topic_check_finds_present_topics_and_names_missing_ones() {
    let cluster = MockCluster::new(1).unwrap();
    let config = KafkaConfig {
        create_topics: false,
        ..KafkaConfig::default()
    };
    cluster.create_topic(&config.review_topic, 3, 1).unwrap();
    cluster.create_topic(&config.completed_topic, 3, 1).unwrap();
    let timeout = Duration::from_secs(5);
    match kafka::ensure_topics(&config, &cluster.bootstrap_servers(), timeout).await {
        Err(KafkaError::MissingTopics(missing)) => {
            assert_eq!(
                missing,
                [
                    config.retraining_topic.clone(),
                    config.dead_letter_topic.clone()
                ]
            )
        }
        other => panic!("expected missing topics, got {other:?}"),
    }
    // Listing topics must not auto-create them.
    cluster
        .create_topic(&config.retraining_topic, 3, 1)
        .unwrap();
    cluster
        .create_topic(&config.dead_letter_topic, 3, 1)
        .unwrap();
    let report = kafka::ensure_topics(&config, &cluster.bootstrap_servers(), timeout)
        .await
        .unwrap();
    assert_eq!(report.existing.len(), 4);
    assert!(report.created.is_empty());
}

#[tokio::test]
async fn topic_check_says_when_the_broker_cannot_create_topics() {
    // librdkafka's mock cluster has no CreateTopics: the error must say the broker refused.
    let cluster = MockCluster::new(1).unwrap();
    let config = KafkaConfig::default();
    let error = kafka::ensure_topics(
        &config,
        &cluster.bootstrap_servers(),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    println!("{error}");
    assert!(matches!(error, KafkaError::CreateTopics(_)), "{error:?}");
    assert!(error.to_string().contains(&config.review_topic), "{error}");
}

#[tokio::test]
async fn topic_check_reports_an_unreachable_broker_within_its_timeout() {
    let started = Instant::now();
    let error = kafka::ensure_topics(
        &KafkaConfig::default(),
        "127.0.0.1:1",
        Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(error, KafkaError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
}

#[test]
fn the_sink_and_the_topic_check_can_run_on_any_tokio_worker() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ReviewSink>();
    let config = KafkaConfig::default();
    send(&kafka::ensure_topics(
        &config,
        "127.0.0.1:1",
        Duration::from_secs(1),
    ));
}

#[tokio::test]
async fn the_embedded_broker_takes_records_and_serves_consumer_groups() {
    let config = KafkaConfig::default();
    let broker = EmbeddedBroker::start(&kafka::topic_names(&config), 3).unwrap();
    let bootstrap = broker.bootstrap_servers().to_owned();
    assert!(bootstrap.starts_with("127.0.0.1:"), "{bootstrap}");
    let report = kafka::ensure_topics(&config, &bootstrap, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(report.existing.len(), 4);

    let metrics = new_metrics();
    let sink = ReviewSink::new(&config, &bootstrap, metrics.clone()).unwrap();
    for i in 0..50 {
        sink.send(&sized_record(&format!("e-{i}"), 200));
    }
    assert_eq!(sink.flush(Duration::from_secs(10)).await, 0);

    // A consumer group member (what the joiner is) gets every partition and every record.
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "embedded-test")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&config.review_topic]).unwrap();
    let mut ids = BTreeSet::new();
    while ids.len() < 50 {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("records within 20 s")
            .unwrap();
        ids.insert(String::from_utf8(message.key().unwrap().to_vec()).unwrap());
    }
    assert_eq!(ids.len(), 50);
}
