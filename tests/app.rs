//! The process as `App` wires it: readiness that does not hang on Kafka unless asked to, the
//! Kafka gauge, and an orderly stop when a component fails.

mod common;

use std::time::Duration;

use common::*;
use http::{Request, StatusCode};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use reviewloop::app::{App, Roles, Shutdown};
use reviewloop::config::Config;
use reviewloop::metrics::{DeliveryOutcome, SkipReason};

async fn get(url: String) -> (StatusCode, String) {
    let (parts, body) = send(Request::get(url).body(full_body("")).unwrap()).await;
    (parts.status, String::from_utf8_lossy(&body).into_owned())
}

async fn readyz(running: &reviewloop::app::Running) -> StatusCode {
    let admin = running.admin_address().unwrap();
    get(format!("http://{admin}/readyz")).await.0
}

async fn kafka_up(running: &reviewloop::app::Running) -> Option<i64> {
    let admin = running.admin_address().unwrap();
    let (_, text) = get(format!("http://{admin}/metrics")).await;
    text.lines()
        .find_map(|line| line.strip_prefix("reviewloop_kafka_up "))
        .map(|value| value.trim().parse().unwrap())
}

async fn start(config: Config, roles: Roles, shutdown: &Shutdown) -> reviewloop::app::Running {
    App::build(config.check().unwrap(), roles)
        .await
        .unwrap()
        .spawn(shutdown.clone())
}

/// An inference the scoring upstream answers with confidence 0.2.
async fn ask_unsure(running: &reviewloop::app::Running) -> http::response::Parts {
    let proxy = running.proxy_address().unwrap();
    let (parts, _) = send(post(
        &format!("http://{proxy}/invocations"),
        "application/json",
        r#"{"score":0.2}"#,
    ))
    .await;
    parts
}

/// A proxy in front of a scoring upstream, with its Kafka brokers at `brokers`.
async fn proxy_config(brokers: &str) -> Config {
    let mut config = config_for(scoring_upstream().await);
    config.kafka.brokers = brokers.into();
    config.review.sample_percent = 0.0;
    config
}

#[tokio::test]
async fn with_the_broker_down_the_proxy_is_ready_and_serves_and_the_gauge_says_kafka_is_down() {
    // Port 1 on loopback: nothing listens.
    let config = proxy_config("127.0.0.1:1").await;
    let shutdown = Shutdown::new();
    let running = start(config, Roles::PROXY, &shutdown).await;
    assert_eq!(readyz(&running).await, StatusCode::OK);
    let parts = ask_unsure(&running).await;
    assert_eq!(parts.status, StatusCode::OK, "inference is served");
    // The monitor's first metadata request gives up after a few seconds.
    let mut up = None;
    for _ in 0..100 {
        up = kafka_up(&running).await;
        if up == Some(0) && running.metrics().kafka_up.get() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(up, Some(0));
    assert_eq!(readyz(&running).await, StatusCode::OK, "still ready");
    shutdown.fire();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn opted_in_readiness_waits_for_the_broker() {
    let mut config = proxy_config("127.0.0.1:1").await;
    config.server.ready_requires_kafka = true;
    let shutdown = Shutdown::new();
    let running = start(config, Roles::PROXY, &shutdown).await;
    assert_eq!(readyz(&running).await, StatusCode::SERVICE_UNAVAILABLE);
    shutdown.fire();
    running.wait().await.unwrap();

    // The same with a broker that answers: ready once the producer has reached it.
    let cluster = MockCluster::new(1).unwrap();
    let mut config = proxy_config(&cluster.bootstrap_servers()).await;
    config.server.ready_requires_kafka = true;
    let shutdown = Shutdown::new();
    let running = start(config, Roles::PROXY, &shutdown).await;
    let mut status = readyz(&running).await;
    for _ in 0..100 {
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = readyz(&running).await;
    }
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kafka_up(&running).await, Some(1));
    shutdown.fire();
    running.wait().await.unwrap();
}

#[tokio::test]
async fn when_the_joiner_fails_run_stops_and_still_delivers_the_queued_review_records() {
    let cluster = MockCluster::new(1).unwrap();
    // Not co-partitioned: the joiner refuses to run a moment after it starts.
    for (topic, partitions) in [
        ("reviewloop.review", 3),
        ("reviewloop.completed", 2),
        ("reviewloop.retraining", 1),
        ("reviewloop.dead-letter", 1),
    ] {
        cluster.create_topic(topic, partitions, 1).unwrap();
    }
    // The broker refuses the first produce requests (retriably): the review record is still
    // being retried when the joiner gives up, so only a flush gets it delivered.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 12],
    );
    let mut config = proxy_config(&cluster.bootstrap_servers()).await;
    config.kafka.create_topics = false;
    let running = start(config, Roles::ALL, &Shutdown::new()).await;
    let metrics = running.metrics().clone();
    let parts = ask_unsure(&running).await;
    assert_eq!(parts.headers["x-reviewloop-review"], "low_confidence");
    let delivered = || metrics.kafka_reports("reviewloop.review", DeliveryOutcome::Delivered);
    assert_eq!(delivered(), 0, "the broker has not taken it yet");

    let error = tokio::time::timeout(Duration::from_secs(60), running.wait())
        .await
        .expect("run stops by itself when the joiner fails")
        .unwrap_err();
    assert!(format!("{error:#}").contains("co-partitioned"), "{error:#}");
    assert_eq!(
        delivered(),
        1,
        "the record was flushed before the process ended"
    );
    assert_eq!(metrics.reviews_skipped(SkipReason::KafkaError), 0);
}
