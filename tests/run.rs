//! `reviewloop run` as a user starts it: proxy and joiner in one process on the embedded broker;
//! a reviewer's answer turns a diverted inference into a retraining record, which carries the
//! request's trace context.

mod common;
mod kafka_support;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test]
async fn a_reviewed_inference_becomes_one_retraining_record() {
    let upstream = scoring_upstream().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_reviewloop"))
        .args(["run"])
        .env("REVIEWLOOP__SERVER__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__CONSOLE__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__UPSTREAM__URL", format!("http://{upstream}"))
        .env("REVIEWLOOP__KAFKA__BROKERS", "embedded")
        .env("REVIEWLOOP__REVIEW__SAMPLE_PERCENT", "0")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = watch_log(
        child.stderr.take().unwrap(),
        &[
            ("proxy listening", "address"),
            ("embedded Kafka broker started", "bootstrap"),
        ],
    );
    let (mut proxy, mut bootstrap) = (None, None);
    while proxy.is_none() || bootstrap.is_none() {
        match log
            .recv_timeout(Duration::from_secs(60))
            .expect("run starts")
        {
            ("proxy listening", value) => proxy = Some(value),
            (_, value) => bootstrap = Some(value),
        }
    }
    let (proxy, bootstrap) = (proxy.unwrap(), bootstrap.unwrap());

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = post(
        &format!("http://{proxy}/invocations"),
        "application/json",
        r#"{"score":0.3}"#,
    );
    request
        .headers_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let (parts, _) = send(request).await;
    assert_eq!(parts.headers["x-reviewloop-review"], "low_confidence");
    let id = parts.headers["x-reviewloop-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let reviews =
        kafka_support::consume(&bootstrap, "reviewloop.review", 1, Duration::from_secs(60));
    let review: serde_json::Value = serde_json::from_slice(reviews[0].payload().unwrap()).unwrap();
    assert_eq!(review["traceparent"], traceparent);
    assert_eq!(
        kafka_support::header(&reviews[0], "ce_traceparent"),
        Some(traceparent)
    );

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let answer = serde_json::json!({
        "id": id, "reviewer": "alice", "answer": {"label": "dog"},
        "submitted_at": "2026-11-22T10:00:00.000Z"
    })
    .to_string();
    producer
        .send(
            FutureRecord::to("reviewloop.completed")
                .key(&id)
                .payload(&answer),
            Duration::from_secs(10),
        )
        .await
        .expect("answer published");

    let records = kafka_support::consume(
        &bootstrap,
        "reviewloop.retraining",
        1,
        Duration::from_secs(60),
    );
    assert_eq!(records.len(), 1, "one retraining record");
    let value: serde_json::Value = serde_json::from_slice(records[0].payload().unwrap()).unwrap();
    assert_eq!(value["id"], id.as_str());
    assert_eq!(value["label"], serde_json::json!({"label": "dog"}));
    assert_eq!(value["agreement"], 1.0);
    assert_eq!(value["confidence"], 0.3);
    assert_eq!(
        value["traceparent"], traceparent,
        "the example traces to its request"
    );
    assert_eq!(
        kafka_support::header(&records[0], "ce_traceparent"),
        Some(traceparent)
    );
    let errors = kafka_support::schema_errors(&kafka_support::schema("retraining"), &value);
    assert!(errors.is_empty(), "{errors:?}");

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
