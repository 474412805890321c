//! `[redact]` end to end: personal data sent through the proxy reaches the model and the
//! client untouched, and neither the review topic nor the retraining record carries it.

mod common;
mod join_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use join_support::{Cluster, Joiner, Reader, Schema};
use reviewloop::config::{FieldAction, FieldRule};
use serde_json::{Value, json};

const EMAILS: [&str; 3] = [
    "ann.lee@example.com",
    "bob+news@mail.example.org",
    "c.d@example.io",
];
/// Test card numbers (Luhn-valid), written as people write them.
const CARDS: [&str; 3] = [
    "4111 1111 1111 1111",
    "5500-0000-0000-0004",
    "378282246310005",
];

/// The model's answer to `body`: it repeats the customer's email (models echo inputs), so the
/// response carries personal data too.
fn answer_to(body: &[u8]) -> Bytes {
    let input: Value = serde_json::from_slice(body).unwrap_or_default();
    let answer = json!([{
        "label": "fraud",
        "score": 0.3,
        "explanation": format!("{} used card {}", input["customer"]["email"].as_str().unwrap_or(""), input["card"].as_str().unwrap_or("")),
    }]);
    Bytes::from(serde_json::to_vec(&answer).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_data_never_reaches_the_topics_and_the_client_sees_the_model_unchanged() {
    let received: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let seen = received.clone();
    let upstream = spawn_upstream(move |request: http::Request<Incoming>| {
        let seen = seen.clone();
        async move {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            seen.lock().unwrap().push(body.clone());
            Response::builder()
                .header("content-type", "application/json")
                .body(full_body(answer_to(&body)))
                .unwrap()
        }
    })
    .await;

    let cluster = Cluster::mock();
    let key = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(key.path(), "a key of at least sixteen bytes\n").unwrap();
    let mut config = config_for(upstream);
    let topics = cluster.config();
    config.kafka = topics.kafka.clone();
    config.join = topics.join.clone();
    config.redact.patterns = vec!["email".into(), "credit_card".into()];
    config.redact.fields = vec![FieldRule {
        path: "request.customer.email".into(),
        action: FieldAction::Hash,
    }];
    config.redact.hash_key_file = Some(key.path().to_owned());
    config.review.sample_percent = 0.0;
    let app = spawn_app(config.clone()).await;

    let mut ids = Vec::new();
    for (email, card) in EMAILS.iter().zip(CARDS) {
        let request = serde_json::to_vec(&json!({
            "customer": {"email": email, "name": "Ann"},
            "card": card,
            "note": format!("please write to {email}"),
        }))
        .unwrap();
        let (parts, body) = send(post(
            &app.url("/invocations"),
            "application/json",
            request.clone(),
        ))
        .await;
        assert_eq!(parts.status, 200);
        assert_eq!(parts.headers["x-reviewloop-review"], "low_confidence");
        // The client gets the model's bytes; the model got the client's.
        assert_eq!(body, answer_to(&request));
        assert_eq!(received.lock().unwrap().last().unwrap(), &request[..]);
        ids.push(
            parts.headers["x-reviewloop-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    let text = app.metrics.render();
    assert!(
        text.contains("reviewloop_redactions_total{rule=\"email\"} 6"),
        "one in each note and each explanation:\n{text}"
    );
    assert!(
        text.contains("reviewloop_redactions_total{rule=\"credit_card\"} 6"),
        "{text}"
    );
    assert!(
        text.contains("reviewloop_redactions_total{rule=\"field\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("reviewloop_redactions_total{rule=\"fail_closed\"} 0"),
        "{text}"
    );

    let leaks = |value: &Value| {
        let text = value.to_string();
        EMAILS
            .iter()
            .chain(&CARDS)
            .filter(|pii| text.contains(*pii))
            .map(|pii| pii.to_string())
            .collect::<Vec<_>>()
    };
    let mut reviews = Reader::new(&cluster.bootstrap, &config.kafka.review_topic);
    assert!(reviews.read_until(Duration::from_secs(30), |r| r.len() >= 3));
    let schema = Schema::load("review.schema.json");
    let mut tokens = Vec::new();
    for review in &reviews.records {
        schema.assert_valid(review);
        assert_eq!(leaks(review), Vec::<String>::new(), "{review:#}");
        let redaction = &review["redaction"];
        assert_eq!(
            redaction["rules"]["request.customer.email"], 1,
            "{review:#}"
        );
        assert_eq!(redaction["rules"]["email"], 2, "{review:#}");
        assert_eq!(redaction["rules"]["credit_card"], 2, "{review:#}");
        assert_eq!(review["request"]["body"]["card"], "[credit_card]");
        assert_eq!(review["request"]["body"]["customer"]["name"], "Ann");
        tokens.push(review["request"]["body"]["customer"]["email"].clone());
    }
    // Each email has its own token, the same however often it is seen.
    tokens.sort_by_key(Value::to_string);
    tokens.dedup();
    assert_eq!(tokens.len(), 3, "{tokens:?}");

    // Through the joiner: the retraining record carries the redacted input and says so.
    let joiner = Joiner::start(&config);
    let producer = cluster.producer();
    for id in &ids {
        producer.answer(&config, id, "alice", "fraud");
    }
    producer.flush();
    let mut retraining = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    assert!(
        retraining.read_until(Duration::from_secs(60), |r| r.len() >= 3),
        "{:?}",
        retraining.records
    );
    let schema = Schema::load("retraining.schema.json");
    for record in &retraining.records {
        schema.assert_valid(record);
        assert_eq!(leaks(record), Vec::<String>::new(), "{record:#}");
        assert_eq!(record["redaction"]["rules"]["email"], 2, "{record:#}");
    }
    joiner.stop().await.unwrap();
}
