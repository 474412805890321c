//! The review sink's disk spool (`kafka.spool_dir`) over librdkafka's mock cluster: records
//! survive an outage longer than `message.timeout.ms` and a SIGKILL of the proxy process in the
//! middle of it; a corrupt last record costs only itself; a full spool is counted and never
//! fails an inference.

mod common;
mod kafka_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use kafka_support::*;
use rdkafka::mocking::MockCluster;
use reviewloop::config::KafkaConfig;
use reviewloop::kafka::{KafkaError, ReviewSink};
use reviewloop::metrics::Metrics;

const TOPIC: &str = "reviewloop.review";

fn cluster() -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 3, 1).expect("topic");
    cluster
}

fn spool_config(dir: &Path) -> KafkaConfig {
    KafkaConfig {
        spool_dir: Some(dir.to_owned()),
        spool_after: Duration::from_secs(1),
        spool_fsync_interval: Duration::from_millis(50),
        options: [("reconnect.backoff.max.ms".to_owned(), "200".to_owned())].into(),
        ..kafka_config(TOPIC)
    }
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// A sink on `dir`, waiting while an earlier sink of this process still holds the directory
/// (its threads let go of it within a metadata timeout).
async fn sink_on(
    config: &KafkaConfig,
    bootstrap: &str,
    metrics: &std::sync::Arc<Metrics>,
) -> ReviewSink {
    for _ in 0..200 {
        match ReviewSink::new(config, bootstrap, metrics.clone()) {
            Ok(sink) => return sink,
            Err(KafkaError::Config(e)) if e.contains("in use") => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("sink: {e}"),
        }
    }
    panic!("the spool directory was never released");
}

#[tokio::test]
async fn a_spool_with_a_corrupt_last_record_replays_everything_before_it() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(dir.path());

    // The broker is away: a shutdown keeps what it could not deliver in the spool.
    cluster.broker_down(1).unwrap();
    let metrics = new_metrics();
    let sink = sink_on(&config, &bootstrap, &metrics).await;
    let n = 40;
    let mut sent = BTreeMap::new();
    for i in 0..n {
        let (record, body) = mixed_record("c", i);
        sink.send(&record);
        sent.insert(record.id.clone(), (record, body));
    }
    assert_eq!(
        sink.flush(Duration::from_millis(300)).await,
        0,
        "nothing dropped"
    );
    assert_eq!(metrics.spool_written.get(), n as u64);
    drop(sink);

    // Damage the last record on disk, as a crash in the middle of writing it would.
    let files = segment_files(dir.path());
    assert!(!files.is_empty(), "the spool holds segments");
    let last = files.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let end = bytes.len() - 1;
    bytes[end] ^= 0xff;
    std::fs::write(last, bytes).unwrap();

    // The next start replays every record before the damaged one, and counts it.
    cluster.broker_up(1).unwrap();
    let metrics = new_metrics();
    let sink = sink_on(&config, &bootstrap, &metrics).await;
    assert!(
        wait_until(Duration::from_secs(30), || metrics.spool_replayed.get()
            == n as u64 - 1
            && metrics.spool_bytes.get() == 0)
        .await,
        "replayed {} of {}, {} bytes left",
        metrics.spool_replayed.get(),
        n - 1,
        metrics.spool_bytes.get()
    );
    assert_eq!(skipped(&metrics, "spool_corrupt"), 1);
    assert!(
        segment_files(dir.path()).is_empty(),
        "replayed segments are deleted"
    );

    let messages = consume(&bootstrap, TOPIC, n - 1, Duration::from_secs(20));
    let validator = schema("review");
    let mut on_topic = BTreeSet::new();
    for message in &messages {
        // Byte for byte the record first sent: same value, key and CloudEvents headers.
        check_review_message(message, &sent, &validator);
        on_topic.insert(key(message).to_owned());
    }
    let expected: BTreeSet<String> = sent.keys().take(n - 1).cloned().collect();
    assert_eq!(on_topic, expected, "all but the damaged last record arrive");
    drop(sink);
}

#[tokio::test]
async fn a_full_producer_queue_hands_records_to_the_spool_and_they_all_arrive() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let config = KafkaConfig {
        queue_capacity: 10,
        ..spool_config(dir.path())
    };
    let metrics = new_metrics();
    let sink = sink_on(&config, &bootstrap, &metrics).await;
    assert!(wait_until(Duration::from_secs(10), || sink.is_kafka_up()).await);
    cluster.broker_down(1).unwrap();
    let n = 100;
    for i in 0..n {
        sink.send(&mixed_record("q", i).0);
    }
    // The first ten wait in the producer's queue; the rest go to disk at once.
    assert!(
        wait_until(Duration::from_secs(5), || metrics.spool_written.get()
            >= n as u64 - 10)
        .await
    );
    assert_eq!(skipped(&metrics, "queue_full"), 0, "none skipped");
    cluster.broker_up(1).unwrap();
    let messages = consume_until(&bootstrap, TOPIC, Duration::from_secs(30), |read| {
        read.iter().map(key).collect::<BTreeSet<_>>().len() >= n
    });
    let ids: BTreeSet<&str> = messages.iter().map(key).collect();
    assert_eq!(ids.len(), n, "every record arrives");
    assert_eq!(skipped(&metrics, "kafka_error"), 0);
}

#[tokio::test]
async fn a_full_spool_counts_spool_full_and_inference_goes_on() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(scoring_upstream().await);
    config.kafka = KafkaConfig {
        brokers: bootstrap.clone(),
        spool_max_bytes: 64 * 1024,
        ..spool_config(dir.path())
    };
    config.review.sample_percent = 0.0;
    let app = spawn_app(config).await;
    assert!(wait_until(Duration::from_secs(20), || app.sink.is_kafka_up()).await);

    cluster.broker_down(1).unwrap();
    let client = client();
    let (mut diverted, mut answered) = (0u64, 0);
    for i in 0..800 {
        let score = if i % 2 == 0 { 0.3 } else { 0.95 };
        let request = Request::post(app.url("/invocations"))
            .header("content-type", "application/json")
            .body(full_body(format!(
                r#"{{"score":{score},"pad":"{}"}}"#,
                "p".repeat(400)
            )))
            .unwrap();
        let response = client.request(request).await.expect("the proxy answers");
        assert_eq!(response.status(), 200, "inference {i} failed");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            serde_json::json!([{"label": "cat", "score": score}]).to_string()
        );
        answered += 1;
        diverted += u64::from(score < 0.7);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(answered, 800);
    // Records still in the producer's queue time out into the spool (or past its limit).
    assert!(wait_until(Duration::from_secs(20), || app.sink.queued() == 0).await);
    let written = app.metrics.spool_written.get();
    let full = skipped(&app.metrics, "spool_full");
    println!("diverted {diverted}: spooled {written}, spool_full {full}");
    assert!(full > 0, "a 64 KiB spool cannot hold {diverted} records");
    assert!(written > 0);
    assert_eq!(
        written + full,
        diverted,
        "every diverted record is accounted for"
    );
    assert!(app.metrics.spool_bytes.get() <= 64 * 1024);

    // Once the broker is back the spooled ones arrive.
    cluster.broker_up(1).unwrap();
    let messages = consume_until(&bootstrap, TOPIC, Duration::from_secs(40), |read| {
        read.iter().map(key).collect::<BTreeSet<_>>().len() as u64 >= written
    });
    let ids: BTreeSet<&str> = messages.iter().map(key).collect();
    assert_eq!(ids.len() as u64, written);
}

/// A `reviewloop proxy` process on the mock cluster, with its spool in `dir`.
struct Proxy {
    child: Option<Child>,
    addr: String,
    admin: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_proxy(upstream: std::net::SocketAddr, bootstrap: &str, dir: &Path) -> Proxy {
    let mut child = Command::new(env!("CARGO_BIN_EXE_reviewloop"))
        .args(["proxy"])
        .env("REVIEWLOOP__SERVER__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__UPSTREAM__URL", format!("http://{upstream}"))
        .env("REVIEWLOOP__KAFKA__BROKERS", bootstrap)
        .env("REVIEWLOOP__KAFKA__REVIEW_TOPIC", TOPIC)
        .env("REVIEWLOOP__KAFKA__SPOOL_DIR", dir)
        // message.timeout.ms follows: a record waits 1 s in memory at most.
        .env("REVIEWLOOP__KAFKA__SPOOL_AFTER", "1s")
        .env(
            "REVIEWLOOP__KAFKA__OPTIONS__RECONNECT_BACKOFF_MAX_MS",
            "200",
        )
        .env("REVIEWLOOP__REVIEW__SAMPLE_PERCENT", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let found = watch_log(
        child.stderr.take().unwrap(),
        &[
            ("proxy listening", "address"),
            ("admin listening", "address"),
        ],
    );
    let mut proxy = Proxy {
        child: Some(child),
        addr: String::new(),
        admin: String::new(),
    };
    while proxy.addr.is_empty() || proxy.admin.is_empty() {
        match found
            .recv_timeout(Duration::from_secs(30))
            .expect("the proxy starts")
        {
            ("proxy listening", addr) => proxy.addr = addr,
            (_, addr) => proxy.admin = addr,
        }
    }
    proxy
}

async fn get(url: String) -> (u16, String) {
    let response = client()
        .request(Request::get(url).body(full_body("")).unwrap())
        .await
        .expect("the admin server answers");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The value of the sample `series` (name with its labels as rendered) in a /metrics text.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// `requests` inferences at one every 4 ms, one in four low-confidence; asserts every answer is
/// the model's and returns the ids of the diverted ones.
async fn load(proxy: &Proxy, phase: &str, requests: usize) -> Vec<String> {
    let client = client();
    let url = format!("http://{}/invocations", proxy.addr);
    let mut diverted = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(4));
    for i in 0..requests {
        ticker.tick().await;
        let score = if i % 4 == 0 { 0.2 } else { 0.97 };
        let request = Request::post(&url)
            .header("content-type", "application/json")
            .body(full_body(format!(r#"{{"score":{score}}}"#)))
            .unwrap();
        let response = client.request(request).await.expect("the proxy answers");
        assert_eq!(response.status(), 200, "{phase}: inference {i} failed");
        let id = response.headers()["x-reviewloop-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let diverted_header = response.headers().contains_key("x-reviewloop-review");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            serde_json::json!([{"label": "cat", "score": score}]).to_string(),
            "{phase}: inference {i} changed"
        );
        assert_eq!(diverted_header, score < 0.7, "{phase}: inference {i}");
        if score < 0.7 {
            diverted.push(id);
        }
    }
    diverted
}

#[tokio::test]
async fn diverted_records_survive_an_outage_and_a_sigkill_of_the_proxy_during_it() {
    let cluster = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let upstream = scoring_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut diverted = Vec::new();

    let mut first = start_proxy(upstream, &bootstrap, dir.path());
    let mut connected = false;
    for _ in 0..200 {
        let (_, metrics) = get(format!("http://{}/metrics", first.admin)).await;
        if sample(&metrics, "reviewloop_kafka_up") == 1.0 {
            connected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(connected, "the proxy reaches the broker");
    diverted.extend(load(&first, "broker up", 250).await);
    cluster.broker_down(1).unwrap();
    // Four times message.timeout.ms: everything queued in memory timed out into the spool.
    diverted.extend(load(&first, "broker down", 1000).await);
    let (status, _) = get(format!("http://{}/readyz", first.admin)).await;
    assert_eq!(status, 200, "ready while spooling");
    let (_, metrics) = get(format!("http://{}/metrics", first.admin)).await;
    let spooled_first = sample(&metrics, "reviewloop_spool_written_total");
    assert!(spooled_first > 0.0, "the first process spooled records");
    let mut child = first.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no flush, no goodbye.
    child.wait().unwrap();
    drop(first);

    let second = start_proxy(upstream, &bootstrap, dir.path());
    diverted.extend(load(&second, "restarted, broker still down", 500).await);
    let (status, _) = get(format!("http://{}/readyz", second.admin)).await;
    assert_eq!(status, 200, "ready while spooling");
    cluster.broker_up(1).unwrap();
    diverted.extend(load(&second, "broker back", 500).await);

    let wanted: BTreeSet<&str> = diverted.iter().map(String::as_str).collect();
    let messages = consume_until(&bootstrap, TOPIC, Duration::from_secs(60), |read| {
        read.iter()
            .map(key)
            .filter(|k| wanted.contains(k))
            .collect::<BTreeSet<_>>()
            .len()
            == wanted.len()
    });
    let mut copies: BTreeMap<&str, usize> = BTreeMap::new();
    for message in &messages {
        *copies.entry(key(message)).or_default() += 1;
    }
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|id| !copies.contains_key(**id))
        .collect();
    let duplicates: usize = copies.values().map(|n| n - 1).sum();
    let (_, metrics) = get(format!("http://{}/metrics", second.admin)).await;
    println!(
        "diverted {}, on the topic {} distinct, {duplicates} duplicates; first process spooled \
         {spooled_first}, second spooled {} and replayed {}",
        wanted.len(),
        copies.len(),
        sample(&metrics, "reviewloop_spool_written_total"),
        sample(&metrics, "reviewloop_spool_replayed_total"),
    );
    assert!(
        missing.is_empty(),
        "{} diverted records never arrived: {missing:?}",
        missing.len()
    );
    assert_eq!(
        copies.len(),
        wanted.len(),
        "only diverted records on the topic"
    );
    for reason in ["spool_full", "spool_error", "spool_corrupt", "kafka_error"] {
        assert_eq!(
            sample(
                &metrics,
                &format!("reviewloop_reviews_skipped_total{{reason=\"{reason}\"}}")
            ),
            0.0,
            "{reason}"
        );
    }
    // Every segment is deleted once replayed.
    let mut emptied = false;
    for _ in 0..100 {
        let (_, metrics) = get(format!("http://{}/metrics", second.admin)).await;
        if sample(&metrics, "reviewloop_spool_bytes") == 0.0 {
            emptied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(emptied, "the spool empties once replayed");
    assert!(segment_files(dir.path()).is_empty());
}
