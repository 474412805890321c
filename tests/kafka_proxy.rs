//! The review sink behind the running proxy: Kafka down never fails an inference, a full queue
//! is counted record for record, sync delivery holds the response until the ack, and SIGTERM
//! flushes what was diverted just before it. Over librdkafka's mock cluster, and (ignored
//! tests) over the real broker of `KAFKA_BOOTSTRAP`.

mod common;
mod kafka_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use kafka_support::{
    BrokerLock, assert_script_broker, broker_script, consume, delivered, key, real_bootstrap,
    skipped, unique_topic, wait_until,
};
use rdkafka::mocking::MockCluster;
use reviewloop::config::{Config, Delivery};
use reviewloop::upstream::Body;

const TOPIC: &str = "reviewloop.review";

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("topic");
    cluster
}

/// The full proxy in front of the scoring upstream, sending review records to `bootstrap`.
async fn app(bootstrap: &str, tune: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = config_for(scoring_upstream().await);
    config.kafka.brokers = bootstrap.to_owned();
    // Only low confidence diverts, so each test knows which inferences make records.
    config.review.sample_percent = 0.0;
    config
        .kafka
        .options
        .insert("reconnect.backoff.max.ms".into(), "200".into());
    tune(&mut config);
    let app = spawn_app(config).await;
    assert!(
        wait_until(Duration::from_secs(20), || app.sink.is_kafka_up()).await,
        "the review sink never connected"
    );
    app
}

fn ask(app: &TestApp, score: f64) -> Request<Body> {
    Request::post(app.url("/invocations"))
        .header("content-type", "application/json")
        .body(full_body(format!("{{\"score\":{score}}}")))
        .unwrap()
}

struct Answer {
    status: u16,
    id: String,
    review: Option<String>,
    body: Bytes,
    took: Duration,
}

async fn call(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Body,
    >,
    request: Request<Body>,
) -> Answer {
    let started = Instant::now();
    let response = client.request(request).await.expect("the proxy answers");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    Answer {
        status: parts.status.as_u16(),
        id: parts.headers["x-reviewloop-id"]
            .to_str()
            .unwrap()
            .to_owned(),
        review: parts
            .headers
            .get("x-reviewloop-review")
            .map(|v| v.to_str().unwrap().to_owned()),
        body,
        took: started.elapsed(),
    }
}

fn expected_body(score: f64) -> String {
    serde_json::json!([{"label": "cat", "score": score}]).to_string()
}

fn diverted_total(app: &TestApp) -> u64 {
    app.metrics
        .reviews_diverted_total
        .with_label_values(&["/invocations", "low_confidence"])
        .get()
}

fn latency(label: &str, mut times: Vec<Duration>) {
    times.sort();
    println!(
        "{label}: p50 {:?} p99 {:?} max {:?} over {} requests",
        times[times.len() / 2],
        times[times.len() * 99 / 100],
        times[times.len() - 1],
        times.len()
    );
}

/// A phase of load: its name, how many requests, and what to do before them.
type Phase<'a> = (&'a str, usize, Box<dyn FnOnce() + 'a>);

/// A steady stream of inferences, every other one low-confidence (diverted), through `phases`
/// (name, requests, what to do first). Asserts each answer is the model's, untouched, and
/// returns the ids of the diverted ones.
async fn steady_load(app: &TestApp, phases: Vec<Phase<'_>>) -> Vec<String> {
    let client = client();
    let mut diverted = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(2));
    for (phase, requests, before) in phases {
        before();
        let (mut with_review, mut without) = (Vec::new(), Vec::new());
        for i in 0..requests {
            ticker.tick().await;
            let score = if i % 2 == 0 { 0.42 } else { 0.99 };
            let answer = call(&client, ask(app, score)).await;
            assert_eq!(answer.status, 200, "{phase}: inference {i} failed");
            assert_eq!(answer.body, expected_body(score), "{phase}: body changed");
            if score < 0.7 {
                assert_eq!(answer.review.as_deref(), Some("low_confidence"));
                diverted.push(answer.id);
                with_review.push(answer.took);
            } else {
                assert_eq!(answer.review, None);
                without.push(answer.took);
            }
        }
        latency(&format!("{phase}, diverted"), with_review);
        latency(&format!("{phase}, not diverted"), without);
    }
    diverted
}

#[tokio::test]
async fn kafka_down_fails_no_inference_and_the_diverted_records_arrive_after_it() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let app = app(&bootstrap, |_| {}).await;
    let diverted = steady_load(
        &app,
        vec![
            ("kafka up", 400, Box::new(|| {})),
            (
                "kafka down",
                400,
                Box::new(|| cluster.broker_down(1).unwrap()),
            ),
            (
                "kafka back",
                400,
                Box::new(|| cluster.broker_up(1).unwrap()),
            ),
        ],
    )
    .await;
    assert_eq!(app.sink.flush(Duration::from_secs(30)).await, 0);
    assert_eq!(diverted_total(&app), diverted.len() as u64);
    assert_eq!(delivered(&app.metrics, TOPIC), diverted.len() as u64);
    let messages = consume(&bootstrap, TOPIC, diverted.len(), Duration::from_secs(20));
    let on_topic: BTreeSet<&str> = messages.iter().map(key).collect();
    let sent: BTreeSet<&str> = diverted.iter().map(String::as_str).collect();
    assert_eq!(
        on_topic, sent,
        "every diverted inference has its record, once"
    );
}

#[tokio::test]
async fn a_queue_too_small_for_the_outage_counts_every_diverted_record() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let app = app(&bootstrap, |config| config.kafka.queue_capacity = 20).await;
    let diverted = steady_load(
        &app,
        vec![
            (
                "kafka down",
                300,
                Box::new(|| cluster.broker_down(1).unwrap()),
            ),
            (
                "kafka back",
                100,
                Box::new(|| cluster.broker_up(1).unwrap()),
            ),
        ],
    )
    .await;
    assert_eq!(app.sink.flush(Duration::from_secs(30)).await, 0);
    let delivered = delivered(&app.metrics, TOPIC);
    let queue_full = skipped(&app.metrics, "queue_full");
    let kafka_error = skipped(&app.metrics, "kafka_error");
    println!(
        "diverted {}: delivered {delivered}, queue_full {queue_full}, kafka_error {kafka_error}",
        diverted.len()
    );
    assert!(queue_full > 0);
    assert_eq!(delivered + queue_full + kafka_error, diverted.len() as u64);
    assert_eq!(diverted_total(&app), diverted.len() as u64);
    let messages = consume(
        &bootstrap,
        TOPIC,
        delivered as usize + 1,
        Duration::from_secs(5),
    );
    assert_eq!(messages.len() as u64, delivered);
}

#[tokio::test]
async fn sync_delivery_holds_the_response_until_the_broker_acked_the_record() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let app = app(&bootstrap, |config| {
        config.kafka.delivery = Delivery::Sync;
        config.kafka.ack_timeout = Duration::from_secs(20);
    })
    .await;
    cluster.broker_down(1).unwrap();
    let mut answer = std::pin::pin!(send(ask(&app, 0.42)));
    tokio::select! {
        _ = &mut answer => panic!("answered before Kafka could ack"),
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    cluster.broker_up(1).unwrap();
    let (parts, body) = answer.await;
    assert_eq!(parts.status, 200);
    assert_eq!(body, expected_body(0.42));
    assert_eq!(parts.headers["x-reviewloop-review"], "low_confidence");
    let id = parts.headers["x-reviewloop-id"].to_str().unwrap();
    // On the topic already when the client got its answer.
    let messages = consume(&bootstrap, TOPIC, 1, Duration::from_secs(10));
    assert_eq!(messages.iter().map(key).collect::<Vec<_>>(), [id]);
}

#[tokio::test]
async fn sync_delivery_without_an_ack_still_answers_the_client_unchanged() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let app = app(&bootstrap, |config| {
        config.kafka.delivery = Delivery::Sync;
        config.kafka.ack_timeout = Duration::from_millis(300);
    })
    .await;
    cluster.broker_down(1).unwrap();
    let started = Instant::now();
    let (parts, body) = send(ask(&app, 0.42)).await;
    println!("answered after {:?} without an ack", started.elapsed());
    assert_eq!(parts.status, 200);
    assert_eq!(body, expected_body(0.42));
    assert!(
        parts.headers.get("x-reviewloop-review").is_none(),
        "no review header when the record was not acked"
    );
    // The record stays queued and arrives once Kafka is back.
    cluster.broker_up(1).unwrap();
    assert_eq!(app.sink.flush(Duration::from_secs(20)).await, 0);
    assert_eq!(delivered(&app.metrics, TOPIC), 1);
}

/// A `reviewloop proxy` process, killed if a test fails before it exits.
struct ProxyProcess(Option<std::process::Child>);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `reviewloop proxy` as a process and returns it with its data address.
fn spawn_binary(
    upstream: std::net::SocketAddr,
    bootstrap: &str,
    topic: &str,
) -> (ProxyProcess, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reviewloop"))
        .args(["proxy"])
        .env("REVIEWLOOP__SERVER__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__UPSTREAM__URL", format!("http://{upstream}"))
        .env("REVIEWLOOP__KAFKA__BROKERS", bootstrap)
        .env("REVIEWLOOP__KAFKA__REVIEW_TOPIC", topic)
        .env("REVIEWLOOP__SERVER__SHUTDOWN_GRACE", "30s")
        .env("REVIEWLOOP__REVIEW__SAMPLE_PERCENT", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("proxy listening")
                && let Some(addr) = line.split("address=").nth(1)
            {
                let _ = addr_tx.send(addr.trim().to_owned());
            }
        }
    });
    let child = ProxyProcess(Some(child));
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the proxy starts");
    (child, addr)
}

/// Diverts `n` inferences through the proxy process, sends SIGTERM right after the last answer,
/// and returns the diverted ids once the process exited 0.
async fn divert_then_sigterm(mut process: ProxyProcess, addr: &str, n: usize) -> Vec<String> {
    let client = client();
    let url = format!("http://{addr}/invocations");
    let mut ids = Vec::new();
    for _ in 0..n {
        let request = Request::post(&url)
            .header("content-type", "application/json")
            .body(full_body(r#"{"score":0.1}"#))
            .unwrap();
        let answer = call(&client, request).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.review.as_deref(), Some("low_confidence"));
        ids.push(answer.id);
    }
    let mut child = process.0.take().expect("running");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "the proxy exits 0 after SIGTERM: {exit}");
    ids
}

#[tokio::test]
async fn sigterm_flushes_the_records_diverted_just_before_it() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let upstream = scoring_upstream().await;
    let (child, addr) = spawn_binary(upstream, &bootstrap, TOPIC);
    // A slow broker: every record is still waiting for its ack when SIGTERM comes.
    cluster
        .broker_round_trip_time(1, Duration::from_millis(700))
        .unwrap();
    let ids = divert_then_sigterm(child, &addr, 200).await;
    let messages = consume(&bootstrap, TOPIC, ids.len(), Duration::from_secs(20));
    let on_topic: BTreeSet<&str> = messages.iter().map(key).collect();
    let sent: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        on_topic, sent,
        "every record diverted before SIGTERM is on the topic"
    );
}

#[tokio::test]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn real_sigterm_flushes_the_records_diverted_just_before_it() {
    let bootstrap = real_bootstrap();
    let _lock = BrokerLock::shared();
    let topic = unique_topic("sigterm.review");
    let upstream = scoring_upstream().await;
    let (child, addr) = spawn_binary(upstream, &bootstrap, &topic);
    let ids = divert_then_sigterm(child, &addr, 500).await;
    let messages = consume(&bootstrap, &topic, ids.len(), Duration::from_secs(30));
    let on_topic: BTreeSet<&str> = messages.iter().map(key).collect();
    assert_eq!(
        on_topic.len(),
        ids.len(),
        "every record diverted before SIGTERM is on the topic"
    );
}

#[tokio::test]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn real_a_hung_broker_fails_no_inference_and_the_records_arrive_after_it() {
    let bootstrap = real_bootstrap();
    let _lock = BrokerLock::exclusive();
    assert_script_broker(&bootstrap);
    let topic = unique_topic("proxy.review");
    let app = app(&bootstrap, |config| {
        config.kafka.review_topic = topic.clone()
    })
    .await;
    let diverted = steady_load(
        &app,
        vec![
            ("broker up", 400, Box::new(|| {})),
            (
                "broker stopped",
                400,
                Box::new(|| drop(broker_script("pause"))),
            ),
            (
                "broker back",
                400,
                Box::new(|| drop(broker_script("resume"))),
            ),
        ],
    )
    .await;
    let flushed = app.sink.flush(Duration::from_secs(60)).await;
    broker_script("resume");
    assert_eq!(flushed, 0);
    assert_eq!(delivered(&app.metrics, &topic), diverted.len() as u64);
    let messages = consume(&bootstrap, &topic, diverted.len(), Duration::from_secs(30));
    let on_topic: BTreeSet<&str> = messages.iter().map(key).collect();
    assert_eq!(on_topic.len(), diverted.len());
    assert_eq!(messages.len(), diverted.len(), "no duplicates");
}
