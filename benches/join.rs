//! Joiner benchmarks, printed as numbers (no timed assertions):
//!
//! - `state`: the pure join state, events/s, and its memory per pending review (live heap
//!   bytes and RSS, slope over 100k pending).
//! - `kafka`: answers/s joined with transactions, end to end (input on the topics →
//!   retraining records committed), over the mock cluster and, with `KAFKA_BOOTSTRAP`, a real
//!   broker; against a baseline read of the same input by a plain consumer in the same run.
//!   Each run first indexes N pending reviews (memory slope of the whole joiner), then
//!   answers them all: every join reads its review payload back by offset.
//! - `process`: with `KAFKA_BOOTSTRAP`, the RSS of the `reviewloop join` binary as its own
//!   process, sampled at rest after every fifth of N reviews became pending (slope).
//!
//! `cargo bench --bench join [-- N]` (N items per Kafka run, default 20000, at most 4000 on
//! the mock cluster; 100000 for the memory slope figures). `cargo test --all-targets` runs a
//! small smoke version (mock cluster only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reviewloop::config::{Agreement, Config, JoinConfig};
use reviewloop::join::state::{JoinState, ReceivedAnswer, ReviewRef, Rules};
use reviewloop::join::{self, state_topic_name};
use reviewloop::metrics::Metrics;
use reviewloop::record::{Answer, ModelInfo};

// The review-record builder of the Kafka test suites.
#[path = "../tests/kafka_support/mod.rs"]
mod kafka_support;

/// Counts live heap bytes (Rust allocations only; librdkafka's own buffers are C malloc and
/// show in RSS instead).
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: defers every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        }
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PARTITIONS: i32 = 3;
const BODY_BYTES: usize = 2048;

fn live_heap() -> i64 {
    LIVE.load(Ordering::Relaxed)
}

fn rss_bytes() -> i64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: i64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary without it,
    // and then a small smoke run checks the benchmark still works without taking CI's time.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(if benchmarking { 20_000 } else { 500 });
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_ansi(false)
            .init();
    }
    state_bench(if benchmarking { 100_000 } else { 10_000 });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The mock cluster has no CreateTopics: its topics are made when it starts.
        let names = topic_names(&config("", "benchmock"));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mock = reviewloop::kafka::EmbeddedBroker::start(&names, PARTITIONS).unwrap();
        let bootstrap = mock.bootstrap_servers().to_owned();
        // The mock cluster keeps only a few MB per partition (older records are deleted
        // before the joiner reads them), so its runs stay small.
        kafka_bench(
            "mock cluster",
            &config(&bootstrap, "benchmock"),
            n.min(4_000),
        )
        .await;
        drop(mock);
        match std::env::var("KAFKA_BOOTSTRAP") {
            Ok(_) if !benchmarking => {
                println!("join/kafka real broker: skipped in the smoke run (cargo bench runs it)")
            }
            Ok(bootstrap) => {
                let prefix = format!("bench{}", uuid::Uuid::now_v7().simple());
                let run = config(&bootstrap, &prefix);
                create_topics(&bootstrap, &run).await;
                kafka_bench("real broker", &run, n).await;
                let prefix = format!("benchrss{}", uuid::Uuid::now_v7().simple());
                let run = config(&bootstrap, &prefix);
                create_topics(&bootstrap, &run).await;
                process_rss_slope(&run, n);
            }
            Err(_) => println!("join/kafka real broker: skipped (set KAFKA_BOOTSTRAP)"),
        }
    });
}

fn rules() -> Rules {
    Rules::from_config(&JoinConfig::default())
}

fn state_bench(count: usize) {
    let ids: Vec<String> = (0..count)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    // Memory: `count` pending reviews, sampled at every fifth.
    let heap0 = live_heap();
    let rss0 = rss_bytes();
    let mut state = JoinState::new(rules());
    let mut samples = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        state.on_review(
            id,
            ReviewRef {
                offset: i as i64,
                timestamp_ms: 1_700_000_000_000 + i as i64,
            },
        );
        if (i + 1) % (count / 5) == 0 {
            // The changelog records are taken each batch in the joiner; same here.
            drop(state.take_changes());
            samples.push((i + 1, live_heap() - heap0, rss_bytes() - rss0));
        }
    }
    let (heap_slope, rss_slope) = slopes(&samples);
    println!(
        "join/state memory: {heap_slope:.0} heap bytes and {rss_slope:.0} RSS bytes per pending review \
         (slope over {} pending; samples {:?})",
        state.pending(),
        samples
            .iter()
            .map(|(n, heap, _)| format!("{n}:{}KiB", heap / 1024))
            .collect::<Vec<_>>()
    );
    drop(state);

    // Speed: review then answer for each id, one reviewer.
    let started = Instant::now();
    let mut state = JoinState::new(rules());
    let mut joined = 0;
    for (i, id) in ids.iter().enumerate() {
        let review = ReviewRef {
            offset: i as i64,
            timestamp_ms: i as i64,
        };
        state.on_review(id, review);
        let answer = ReceivedAnswer {
            answer: Answer {
                reviewer: "alice".into(),
                answer: serde_json::json!({"label": "cat"}),
                submitted_at: None,
                time_spent_seconds: None,
            },
            offset: i as i64,
            timestamp_ms: i as i64,
        };
        joined += usize::from(state.on_answer(id, answer).1.is_some());
        if i % 1000 == 0 {
            drop(state.take_changes());
        }
    }
    let elapsed = started.elapsed();
    println!(
        "join/state speed: {:.0} joins/s ({joined} reviews + answers in {elapsed:?}, changelog taken every 1000)",
        joined as f64 / elapsed.as_secs_f64()
    );
}

/// Least-squares slopes of heap and RSS over the count.
fn slopes(samples: &[(usize, i64, i64)]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = |f: &dyn Fn(&(usize, i64, i64)) -> f64| samples.iter().map(f).sum::<f64>() / n;
    let mx = mean(&|s| s.0 as f64);
    let slope = |f: &dyn Fn(&(usize, i64, i64)) -> f64| {
        let my = mean(f);
        let num: f64 = samples
            .iter()
            .map(|s| (s.0 as f64 - mx) * (f(s) - my))
            .sum();
        let den: f64 = samples.iter().map(|s| (s.0 as f64 - mx).powi(2)).sum();
        num / den
    };
    (slope(&|s| s.1 as f64), slope(&|s| s.2 as f64))
}

fn config(bootstrap: &str, prefix: &str) -> Config {
    let mut config = Config::default();
    config.kafka.brokers = bootstrap.to_owned();
    config.kafka.review_topic = format!("{prefix}.review");
    config.kafka.completed_topic = format!("{prefix}.completed");
    config.kafka.retraining_topic = format!("{prefix}.retraining");
    config.kafka.dead_letter_topic = format!("{prefix}.dead-letter");
    config.kafka.topic_partitions = PARTITIONS;
    config.kafka.topic_replication = 1;
    if let Ok(debug) = std::env::var("BENCH_KAFKA_DEBUG") {
        config.kafka.options.insert("debug".into(), debug);
    }
    config.join.group_id = format!("{prefix}-join");
    config.join.reviewers_per_item = 1;
    config.join.agreement = Agreement::Majority;
    config
}

fn topic_names(config: &Config) -> [String; 5] {
    [
        config.kafka.review_topic.clone(),
        config.kafka.completed_topic.clone(),
        config.kafka.retraining_topic.clone(),
        config.kafka.dead_letter_topic.clone(),
        state_topic_name(&config.join.group_id),
    ]
}

async fn create_topics(bootstrap: &str, config: &Config) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let names = topic_names(config);
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|name| NewTopic::new(name, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    for result in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
}

fn review(id: &str) -> Vec<u8> {
    let body = format!(r#"{{"inputs":"{}"}}"#, "x".repeat(BODY_BYTES));
    let record = kafka_support::record_with_model(
        id,
        "application/json",
        body.as_bytes(),
        ModelInfo::default(),
    );
    serde_json::to_vec(&record).unwrap()
}

fn produce(producer: &BaseProducer, topic: &str, key: &str, payload: &[u8]) {
    let mut record = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

fn metric(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

async fn wait_for(metrics: &Metrics, series: &str, at_least: f64, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if metric(metrics, series) >= at_least {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

/// Prints a topic's watermarks (diagnosing a stalled run).
fn check_topic(bootstrap: &str, topic: &str) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-check")
        .create()
        .unwrap();
    for p in 0..PARTITIONS {
        eprintln!(
            "{topic}/{p}: {:?}",
            consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
        );
    }
}

/// Reads every record of `topic` with a plain consumer: the input-side ceiling.
fn raw_read(bootstrap: &str, topic: &str, expected: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-baseline")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    // Timed from the first record to the last, like the joiner.
    let limit = Instant::now() + Duration::from_secs(300);
    let mut first: Option<Instant> = None;
    let mut seen = 0;
    while seen < expected && Instant::now() < limit {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    first.map_or(Duration::ZERO, |first| first.elapsed())
}

async fn kafka_bench(label: &str, config: &Config, n: usize) {
    let bootstrap = config.kafka.brokers.as_str();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();

    let metrics = Arc::new(Metrics::new());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let joiner = {
        let config = config.clone();
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            join::run(
                &config.join,
                &config.kafka,
                &config.kafka.brokers,
                metrics,
                async {
                    let _ = stopped.await;
                },
            )
            .await
        })
    };
    // Warm up: one item joined means the joiner holds its partitions.
    produce(
        &producer,
        &config.kafka.review_topic,
        "warm",
        &review("warm"),
    );
    let answer = |id: &str| {
        format!(r#"{{"id":"{id}","reviewer":"alice","answer":{{"label":"cat"}}}}"#).into_bytes()
    };
    produce(
        &producer,
        &config.kafka.completed_topic,
        "warm",
        &answer("warm"),
    );
    producer.flush(Duration::from_secs(30)).unwrap();
    assert!(
        wait_for(
            &metrics,
            "reviewloop_retraining_records_total",
            1.0,
            Duration::from_secs(120)
        )
        .await,
        "{label}: the joiner did not start"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let heap0 = live_heap();
    let rss0 = rss_bytes();

    // Phase 1: n reviews become pending.
    let ids: Vec<String> = (0..n).map(|i| format!("item-{i:07}")).collect();
    let started = Instant::now();
    for id in &ids {
        produce(&producer, &config.kafka.review_topic, id, &review(id));
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let pending = wait_for(
        &metrics,
        "reviewloop_reviews_pending",
        n as f64,
        Duration::from_secs(120),
    )
    .await;
    if !pending {
        check_topic(bootstrap, &config.kafka.review_topic);
    }
    assert!(
        pending,
        "{label}: reviews did not all become pending:\n{}",
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("reviewloop_") && !l.contains("_bucket"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let indexed = started.elapsed();
    let _ = check_topic;
    tokio::time::sleep(Duration::from_secs(3)).await; // let fetch buffers drain
    let heap1 = live_heap();
    let rss1 = rss_bytes();
    println!(
        "join/kafka {label}: {n} reviews ({} KiB each) indexed in {indexed:?} ({:.0} reviews/s); \
         memory per pending review: {:.0} heap bytes, {:.0} RSS bytes",
        BODY_BYTES / 1024,
        n as f64 / indexed.as_secs_f64(),
        (heap1 - heap0) as f64 / n as f64,
        (rss1 - rss0) as f64 / n as f64,
    );

    // Phase 2: all answers, produced up front; the joiner is timed from its first join of
    // them to its last.
    for id in &ids {
        produce(&producer, &config.kafka.completed_topic, id, &answer(id));
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let first_deadline = Duration::from_secs(120);
    assert!(
        wait_for(
            &metrics,
            "reviewloop_retraining_records_total",
            2.0,
            first_deadline
        )
        .await
    );
    let t_first = Instant::now();
    let joined = wait_for(
        &metrics,
        "reviewloop_retraining_records_total",
        (n + 1) as f64,
        Duration::from_secs(900),
    )
    .await;
    let elapsed = t_first.elapsed();
    assert!(joined, "{label}: not all answers joined");
    let rate = (n - 1) as f64 / elapsed.as_secs_f64();
    let raw = raw_read(bootstrap, &config.kafka.completed_topic, n + 1);
    let raw_rate = n as f64 / raw.as_secs_f64();
    println!(
        "join/kafka {label}: {rate:.0} answers/s joined with transactions (each fetching its \
         review by offset); baseline plain read of the answers {raw_rate:.0} records/s; ratio {:.2}",
        rate / raw_rate
    );
    let _ = stop.send(());
    joiner.await.unwrap().unwrap();
}

/// The `reviewloop join` binary as its own process (so no producer or test buffers count),
/// its RSS sampled at rest after every fifth of `n` reviews became pending.
fn process_rss_slope(config: &Config, n: usize) {
    let mut config = config.clone();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    let config = &config;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reviewloop.toml");
    std::fs::write(&path, toml::to_string(config).unwrap()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_reviewloop"))
        .args(["join", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("reviewloop binary");
    let pid = child.id();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let answer = br#"{"id":"warm","reviewer":"alice","answer":{"label":"cat"}}"#;
    produce(
        &producer,
        &config.kafka.review_topic,
        "warm",
        &review("warm"),
    );
    produce(&producer, &config.kafka.completed_topic, "warm", answer);
    producer.flush(Duration::from_secs(30)).unwrap();
    raw_read(&config.kafka.brokers, &config.kafka.retraining_topic, 1);
    let step = n / 5;
    let mut samples = vec![(0, 0, settle_rss(pid))];
    for s in 1..=5 {
        for i in (s - 1) * step..s * step {
            let id = format!("item-{i:07}");
            produce(&producer, &config.kafka.review_topic, &id, &review(&id));
        }
        producer.flush(Duration::from_secs(120)).unwrap();
        samples.push((s * step, 0, settle_rss(pid)));
    }
    let _ = child.kill();
    let _ = child.wait();
    let base = samples[0].2;
    let (_, slope) = slopes(&samples);
    println!(
        "join/process RSS of `reviewloop join`: {slope:.0} bytes per pending review (slope over {} \
         pending, {} KiB reviews); samples {:?}",
        5 * step,
        BODY_BYTES / 1024,
        samples
            .iter()
            .map(|(n, _, rss)| format!("{n}:{}MiB", (rss - base) / (1 << 20)))
            .collect::<Vec<_>>()
    );
}

/// The process's RSS once it has been idle (almost no CPU) for two seconds.
fn settle_rss(pid: u32) -> i64 {
    let cpu_ticks = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        fields
            .get(11)
            .and_then(|u| u.parse::<i64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<i64>().ok())
                .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut last = cpu_ticks();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
        let now = cpu_ticks();
        if now - last <= 5 {
            break;
        }
        last = now;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .unwrap_or(0)
        * 1024
}
