//! How many review records per second one process hands to Kafka through the review sink
//! (1 KB request bodies), what a `send` costs on the request path, and what sync delivery
//! costs, against librdkafka's mock cluster and, when `KAFKA_BOOTSTRAP` is set, a real broker.
//!
//! `cargo bench --bench kafka_sink` (optionally: `export $(scripts/kafka-broker start)` first).
//! `BENCH_RECORDS=N` changes the burst size (default 200000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use reviewloop::config::{Delivery, KafkaConfig};
use reviewloop::kafka::{self, ReviewSink};
use reviewloop::metrics::Metrics;
use reviewloop::record::{ModelInfo, ReviewRecord};

// The review-record builder of the Kafka test suites.
#[path = "../tests/kafka_support/mod.rs"]
mod kafka_support;

fn record(i: usize) -> ReviewRecord {
    let text: String = (0..1000)
        .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
        .collect();
    let body = format!(r#"{{"inputs":"{text}"}}"#);
    kafka_support::record_with_model(
        &format!("bench-{i:08}"),
        "application/json",
        body.as_bytes(),
        ModelInfo::default(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

fn delivered(metrics: &Metrics, topic: &str) -> u64 {
    metrics
        .kafka_messages_total
        .with_label_values(&[topic, "delivered"])
        .get()
}

/// The work `send` cannot avoid: the record's JSON and its headers, nothing handed to Kafka.
/// The median of per-call times, measured the way `send` is (after a warm-up pass).
fn baseline(records: &[ReviewRecord]) -> Duration {
    let mut times = Vec::with_capacity(records.len());
    for pass in 0..2 {
        times.clear();
        for record in records {
            let t = Instant::now();
            let value = serde_json::to_vec(record).unwrap();
            let headers =
                kafka::cloudevent_headers(kafka::CE_REVIEW_REQUESTED, &record.id, &record.time);
            std::hint::black_box((value, headers));
            if pass == 1 {
                times.push(t.elapsed());
            }
        }
    }
    times.sort();
    percentile(&times, 0.5)
}

async fn run(
    target: &str,
    bootstrap: &str,
    create_topics: bool,
    records: &[ReviewRecord],
    per_send_floor: Duration,
) {
    let topic = format!("bench.review.{}", uuid::Uuid::now_v7().simple());
    let config = KafkaConfig {
        review_topic: topic.clone(),
        queue_capacity: records.len() + 10_000,
        topic_partitions: 3,
        ..KafkaConfig::default()
    };
    // The mock cluster cannot create topics (it auto-creates them on first use).
    if create_topics {
        kafka::ensure_topics(&config, bootstrap, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{target}: {e}"));
    }
    let metrics = Arc::new(Metrics::new());
    let sink = ReviewSink::new(&config, bootstrap, metrics.clone()).unwrap();
    for r in &records[..1000] {
        sink.send(r);
    }
    assert_eq!(sink.flush(Duration::from_secs(30)).await, 0, "warm-up");
    let warm = delivered(&metrics, &topic);

    // Throughput: a burst handed over as fast as one thread can, until every ack is in.
    let mut send_times = Vec::with_capacity(records.len());
    let started = Instant::now();
    for r in records {
        let t = Instant::now();
        sink.send(r);
        send_times.push(t.elapsed());
    }
    let handed = started.elapsed();
    let left = sink.flush(Duration::from_secs(300)).await;
    let total = started.elapsed();
    let acked = delivered(&metrics, &topic) - warm;
    let skipped = metrics
        .reviews_skipped_total
        .with_label_values(&["queue_full"])
        .get();
    send_times.sort();
    let rate = acked as f64 / total.as_secs_f64();
    println!(
        "{target}: {acked} records of 1 KB acked in {total:.2?} = {rate:.0} records/s \
         ({:.1} MB/s of record JSON); handed over in {handed:.2?}; skipped {skipped}, left {left}",
        rate * serde_json::to_vec(&records[0]).unwrap().len() as f64 / 1e6
    );
    println!(
        "{target}: send() in the burst: p50 {:?} p99 {:?} max {:?} (JSON+headers alone: p50 {:?}; ratio {:.2}x)",
        percentile(&send_times, 0.5),
        percentile(&send_times, 0.99),
        send_times.last().unwrap(),
        per_send_floor,
        percentile(&send_times, 0.5).as_secs_f64() / per_send_floor.as_secs_f64()
    );

    // The request path's view: a steady 2000 records/s, as a busy proxy would divert them.
    let mut paced = Vec::with_capacity(4000);
    let mut ticker = tokio::time::interval(Duration::from_micros(500));
    for r in records.iter().take(4000) {
        ticker.tick().await;
        let t = Instant::now();
        sink.send(r);
        paced.push(t.elapsed());
    }
    sink.flush(Duration::from_secs(30)).await;
    paced.sort();
    println!(
        "{target}: send() at 2000 records/s: p50 {:?} p99 {:?} max {:?}",
        percentile(&paced, 0.5),
        percentile(&paced, 0.99),
        paced.last().unwrap()
    );
    drop(sink);

    // Sync delivery: what a diverted response waits for the ack, one at a time and 64 at once.
    let sync_config = KafkaConfig {
        delivery: Delivery::Sync,
        ack_timeout: Duration::from_secs(30),
        ..config
    };
    let sink = Arc::new(ReviewSink::new(&sync_config, bootstrap, metrics.clone()).unwrap());
    let mut waits = Vec::new();
    for r in records.iter().take(500) {
        let t = Instant::now();
        sink.send_and_wait(r).await.unwrap();
        waits.push(t.elapsed());
    }
    waits.sort();
    println!(
        "{target}: sync ack, one at a time: p50 {:?} p99 {:?}",
        percentile(&waits, 0.5),
        percentile(&waits, 0.99)
    );
    let started = Instant::now();
    let n = 20_000.min(records.len() / 2);
    let mut tasks = tokio::task::JoinSet::new();
    let shared: Arc<Vec<ReviewRecord>> = Arc::new(records[..n].to_vec());
    for worker in 0..64 {
        let (sink, shared) = (sink.clone(), shared.clone());
        tasks.spawn(async move {
            let mut waits = Vec::new();
            for r in shared.iter().skip(worker).step_by(64) {
                let t = Instant::now();
                sink.send_and_wait(r).await.unwrap();
                waits.push(t.elapsed());
            }
            waits
        });
    }
    let mut waits: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    let elapsed = started.elapsed();
    waits.sort();
    println!(
        "{target}: sync ack, 64 concurrent: {:.0} records/s, wait p50 {:?} p99 {:?}",
        n as f64 / elapsed.as_secs_f64(),
        percentile(&waits, 0.5),
        percentile(&waits, 0.99)
    );
}

/// An upstream answering Hugging-Face-shaped JSON whose score is the request's `score`.
async fn scoring_upstream() -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        let input: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let score = input["score"].as_f64().unwrap_or(0.99);
                        let answer = serde_json::json!([{"label": "cat", "score": score}]);
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(reviewloop::upstream::full_body(answer.to_string()))
                                .unwrap(),
                        )
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            });
        }
    });
    addr
}

/// The request path's view through the running proxy: the latency of inferences that are
/// diverted (a review record built and handed to the sink) against those that are not, with
/// the broker up and with it down. Requests alternate, one at a time, on one keep-alive
/// connection, so both kinds see the same conditions.
async fn proxy_latency(
    cluster: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    requests: usize,
) {
    use http_body_util::BodyExt;
    let mut config = reviewloop::config::Config::default();
    config.upstream.url = format!("http://{}", scoring_upstream().await);
    config.review.sample_percent = 0.0;
    config.kafka.review_topic = format!("bench.proxy.{}", uuid::Uuid::now_v7().simple());
    let upstream = reviewloop::upstream::Upstream::from_config(&config.upstream)
        .await
        .unwrap();
    config.kafka.brokers = cluster.bootstrap_servers();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.kafka.create_topics = false;
    let checked = config.check().unwrap();
    let shutdown = reviewloop::app::Shutdown::new();
    let running = reviewloop::app::App::build_on(checked, reviewloop::app::Roles::PROXY, upstream)
        .await
        .unwrap()
        .spawn(shutdown.clone());
    let sink = running.sink().unwrap().clone();
    let url = format!("http://{}/invocations", running.proxy_address().unwrap());
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let measure = async |label: &str| {
        let (mut diverted, mut plain) = (Vec::new(), Vec::new());
        for i in 0..requests {
            let score = if i % 2 == 0 { 0.42 } else { 0.99 };
            let request = hyper::Request::post(&url)
                .header("content-type", "application/json")
                .body(reviewloop::upstream::full_body(format!(
                    "{{\"score\":{score}}}"
                )))
                .unwrap();
            let t = Instant::now();
            let response = client.request(request).await.unwrap();
            assert_eq!(response.status(), 200);
            response.into_body().collect().await.unwrap();
            if score < 0.7 {
                diverted.push(t.elapsed())
            } else {
                plain.push(t.elapsed())
            }
        }
        diverted.sort();
        plain.sort();
        let (d50, p50) = (percentile(&diverted, 0.5), percentile(&plain, 0.5));
        println!(
            "proxy, {label}: diverted p50 {d50:?} p99 {:?} | not diverted p50 {p50:?} p99 {:?} | \
             added by diversion at p50: {:?} ({:.2}x)",
            percentile(&diverted, 0.99),
            percentile(&plain, 0.99),
            d50.saturating_sub(p50),
            d50.as_secs_f64() / p50.as_secs_f64()
        );
    };
    measure("warm-up").await;
    measure("Kafka up").await;
    cluster.broker_down(1).unwrap();
    measure("Kafka down").await;
    cluster.broker_up(1).unwrap();
    sink.flush(Duration::from_secs(30)).await;
    shutdown.fire();
    running.wait().await.unwrap();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it, and
    // then a small smoke run checks the benchmark still works without taking CI's time.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benchmarking { 200_000 } else { 5_000 });
    let records: Vec<ReviewRecord> = (0..n).map(record).collect();
    println!(
        "review record size: {} bytes of JSON (1 KB request body)",
        serde_json::to_vec(&records[0]).unwrap().len()
    );
    let floor = baseline(&records);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let cluster = MockCluster::new(1).unwrap();
    runtime.block_on(run(
        "mock cluster",
        &cluster.bootstrap_servers(),
        false,
        &records,
        floor,
    ));
    runtime.block_on(proxy_latency(
        &cluster,
        if benchmarking { 20_000 } else { 200 },
    ));
    drop(cluster);

    match std::env::var("KAFKA_BOOTSTRAP") {
        Ok(bootstrap) => runtime.block_on(run(
            &format!("real broker {bootstrap}"),
            &bootstrap,
            true,
            &records,
            floor,
        )),
        Err(_) => println!(
            "real broker: skipped (set KAFKA_BOOTSTRAP, e.g. export $(scripts/kafka-broker start))"
        ),
    }
}
