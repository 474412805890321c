//! The proxy benchmark: the same closed-loop load, in alternating rounds, against a fast model
//! server directly, through nginx, and through reviewloop (10 % diverted to a real Kafka broker,
//! nothing diverted, everything diverted); then one request at a time, SSE time to first event,
//! and optionally a perf profile of reviewloop under load. Prints Markdown tables and writes JSON.
//!
//! Run it through `scripts/bench [--quick]`, which installs wrk and nginx, starts the broker and
//! builds the binaries; BENCHMARKS.md explains every column.

mod load;
mod procs;
mod report;
mod soak;
mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;

use crate::load::{Wrk, metric_sum};
use crate::procs::{Children, Guarded, Reviewloop};
use crate::report::{ReviewCounts, Round, SingleConnection, Sse, Summary};
use crate::upstream::Upstream;

#[derive(Parser, Debug)]
#[command(about = "reviewloop against direct and nginx, the same load side by side")]
struct Args {
    /// A smoke run of a few seconds (CI): 1 round of 1 s, few SSE samples, debug builds fine.
    #[arg(long)]
    quick: bool,
    /// Seconds of load per round and target [default: 10; --quick: 1].
    #[arg(long)]
    duration: Option<u64>,
    /// Rounds per target, targets alternating within each round [default: 3; --quick: 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Concurrent connections of the closed loop.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// wrk threads [default: the number of cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds per single-connection round [default: 5; --quick: 1].
    #[arg(long)]
    single_duration: Option<u64>,
    /// SSE requests per target [default: 40; --quick: 3].
    #[arg(long)]
    sse_samples: Option<usize>,
    /// The reviewloop binary [default: `reviewloop` next to this example's directory].
    #[arg(long)]
    reviewloop: Option<PathBuf>,
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    #[arg(long, default_value = "nginx")]
    nginx: PathBuf,
    /// Where to write the JSON results.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also record a perf profile of the diverting reviewloop under load into this directory.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// The Kafka broker review records go to (a real broker process; with --soak, `mock`
    /// runs librdkafka's mock cluster in this process).
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    kafka: String,
    /// The broker's pid, to report its CPU per request too.
    #[arg(long, env = "BENCH_BROKER_PID")]
    broker_pid: Option<u32>,
    /// Extra environment for every reviewloop process (repeatable), e.g. to try a setting:
    /// `--reviewloop-env REVIEWLOOP__KAFKA__OPTIONS__LINGER_MS=50`.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    reviewloop_env: Vec<(String, String)>,
    /// Also measure reviewloop diverting 10 % with the disk spool on (`kafka.spool_dir`, broker
    /// healthy), and its ratio to the same without the spool.
    #[arg(long)]
    spool: bool,
    /// Pins the proxy under test (nginx with one worker, each reviewloop) to the first core and
    /// wrk, the upstream and this harness to the others (`taskset`), so that CPU per request is
    /// not blurred by the load generator sharing the proxy's core. Needs 2 cores or more.
    #[arg(long)]
    pin: bool,
    /// A second reviewloop binary (B) measured as extra targets in the same alternating rounds,
    /// with the ratios B / A printed: an A/B of two builds from one run.
    #[arg(long, value_name = "BIN")]
    reviewloop_b: Option<PathBuf>,
    /// Instead of the comparison: push this many requests through one reviewloop diverting
    /// 10 % and print its RSS after the warm-up and at the end.
    #[arg(long, value_name = "REQUESTS")]
    soak: Option<u64>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

struct Plan {
    duration: u64,
    rounds: usize,
    warmup: u64,
    single_duration: u64,
    sse_samples: usize,
    threads: usize,
    pinning: Option<Pinning>,
}

/// `--pin`: `taskset` CPU lists of the proxy under test and of everything else.
struct Pinning {
    proxy: String,
    load: String,
}

impl Pinning {
    fn new(cores: usize) -> anyhow::Result<Pinning> {
        if cores < 2 {
            bail!("--pin needs 2 cores or more (this machine has {cores})");
        }
        Ok(Pinning {
            proxy: "0".into(),
            load: if cores == 2 {
                "1".into()
            } else {
                format!("1-{}", cores - 1)
            },
        })
    }
}

/// What the load goes through.
struct Target {
    key: &'static str,
    /// The configuration measured (for a `--reviewloop-b` target, the A target's key).
    variant: &'static str,
    label: &'static str,
    addr: SocketAddr,
    process: Option<Guarded>,
    admin: Option<SocketAddr>,
    review_topic: Option<String>,
}

const DIRECT: &str = "direct";
const NGINX: &str = "nginx";
const DIVERT10: &str = "reviewloop_divert_10";
const INSPECT: &str = "reviewloop_divert_0";
const DIVERT100: &str = "reviewloop_divert_100";
const DIVERT10_SPOOL: &str = "reviewloop_divert_10_spool";
const PASSTHROUGH: &str = "reviewloop_passthrough";
/// The suffix of `--reviewloop-b`'s targets.
const B_SUFFIX: &str = "_b";

/// The configuration a target measures: its key without the B suffix.
fn variant_of(key: &str) -> &str {
    key.strip_suffix(B_SUFFIX).unwrap_or(key)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pinning = args.pin.then(|| Pinning::new(cores)).transpose()?;
    if let Some(pin) = &pinning {
        // Before the upstream's runtime starts its threads: they inherit this. The broker
        // (when its pid is known) goes with the load, off the proxy's core.
        procs::pin(std::process::id(), &pin.load)?;
        if let Some(broker) = args.broker_pid {
            procs::pin(broker, &pin.load)?;
        }
    }
    let plan = Plan {
        duration: args.duration.unwrap_or(if args.quick { 1 } else { 10 }),
        rounds: args.rounds.unwrap_or(if args.quick { 1 } else { 3 }),
        warmup: if args.quick { 1 } else { 3 },
        single_duration: args
            .single_duration
            .unwrap_or(if args.quick { 1 } else { 5 }),
        sse_samples: args.sse_samples.unwrap_or(if args.quick { 3 } else { 40 }),
        threads: args
            .threads
            .unwrap_or(if pinning.is_some() { cores - 1 } else { cores }),
        pinning,
    };
    let reviewloop = match &args.reviewloop {
        Some(path) => path.clone(),
        None => sibling_binary("reviewloop")?,
    };
    let work = std::env::temp_dir().join(format!("reviewloop-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let children = Children::default();

    // The upstream runs here, on its own runtime, which also stops every child on a signal.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()?;
    let upstream = runtime.block_on(Upstream::start())?;
    let on_signal = children.clone();
    let work_dir = work.clone();
    runtime.spawn(async move {
        reviewloop::app::shutdown_signal().await;
        on_signal.terminate_all();
        // Give nginx and reviewloop a moment to exit before their directory goes.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = std::fs::remove_dir_all(&work_dir);
        std::process::exit(130);
    });

    let machine = Machine::describe(&args, &reviewloop, cores);
    eprintln!(
        "bench: {} × {} ({} MiB); upstream {} answers {} bytes; work dir {}",
        machine.cores,
        machine.cpu_model,
        machine.memory_bytes / 1048576,
        upstream.addr,
        upstream.answer_bytes(),
        work.display()
    );

    let result = run(
        &args,
        &plan,
        &reviewloop,
        &upstream,
        &work,
        &children,
        machine,
    );
    drop(runtime);
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&work);
        }
        // The processes' logs stay for the post-mortem.
        Err(_) => eprintln!("bench: failed; logs kept in {}", work.display()),
    }
    result
}

fn run(
    args: &Args,
    plan: &Plan,
    reviewloop: &Path,
    upstream: &Upstream,
    work: &Path,
    children: &Children,
    machine: Machine,
) -> anyhow::Result<()> {
    let script = work.join("load.lua");
    std::fs::write(&script, load::wrk_script())?;
    let wrk = Wrk {
        binary: &args.wrk,
        script: &script,
        cpus: plan.pinning.as_ref().map(|p| p.load.as_str()),
    };
    let proxy_cpus = plan.pinning.as_ref().map(|p| p.proxy.as_str());

    if let Some(requests) = args.soak {
        // `--kafka mock`: librdkafka's mock cluster in this process, so the broker's memory
        // and CPU stay out of the way.
        let mock = (args.kafka == "mock")
            .then(|| soak::MockKafka::start(&review_topic(DIVERT10)))
            .transpose()?;
        let brokers = mock.as_ref().map_or(args.kafka.clone(), |m| m.bootstrap());
        let target = start_reviewloop_target(
            args,
            &brokers,
            (reviewloop, proxy_cpus),
            upstream,
            work,
            children,
            (DIVERT10, "reviewloop, 10 % diverted", "0.7", None),
        )?;
        return soak::soak(
            &target,
            &wrk,
            plan.threads,
            args.connections,
            plan.warmup.max(10),
            requests,
        );
    }

    let mut targets = vec![Target {
        key: DIRECT,
        variant: DIRECT,
        label: "direct (no proxy)",
        addr: upstream.addr,
        process: None,
        admin: None,
        review_topic: None,
    }];
    let nginx_dir = work.join("nginx");
    std::fs::create_dir_all(&nginx_dir)?;
    let (nginx, nginx_addr) =
        procs::start_nginx(&args.nginx, &nginx_dir, upstream.addr, proxy_cpus, children)?;
    targets.push(Target {
        key: NGINX,
        variant: NGINX,
        label: "nginx (reverse proxy, keep-alive)",
        addr: nginx_addr,
        process: Some(nginx),
        admin: None,
        review_topic: None,
    });
    // max_inspect_bytes = 1: every response is larger, so it streams through uncopied and
    // undecided (counted as skipped, too_large): the HTTP plumbing alone.
    let passthrough = Some((
        "REVIEWLOOP__SERVER__MAX_INSPECT_BYTES".to_owned(),
        "1".to_owned(),
    ));
    let mut variants = vec![
        (
            PASSTHROUGH,
            "reviewloop, passthrough (inspects nothing)",
            "0.7",
            passthrough,
        ),
        (DIVERT10, "reviewloop, 10 % diverted", "0.7", None),
        (INSPECT, "reviewloop, inspected, 0 % diverted", "0.0", None),
        (DIVERT100, "reviewloop, 100 % diverted", "1.0", None),
    ];
    if args.spool {
        let spool = work.join("spool");
        variants.push((
            DIVERT10_SPOOL,
            "reviewloop, 10 % diverted, disk spool on",
            "0.7",
            Some((
                "REVIEWLOOP__KAFKA__SPOOL_DIR".to_owned(),
                spool.display().to_string(),
            )),
        ));
    }
    for spec in &variants {
        targets.push(start_reviewloop_target(
            args,
            &args.kafka,
            (reviewloop, proxy_cpus),
            upstream,
            work,
            children,
            spec.clone(),
        )?);
    }
    if let Some(b) = &args.reviewloop_b {
        for (key, label, below, extra) in variants {
            // Leaked once per target for the run: keys and labels are 'static everywhere else.
            let key_b: &'static str = Box::leak(format!("{key}{B_SUFFIX}").into_boxed_str());
            let label_b: &'static str = Box::leak(format!("{label} [B]").into_boxed_str());
            let mut target = start_reviewloop_target(
                args,
                &args.kafka,
                (b, proxy_cpus),
                upstream,
                work,
                children,
                (key_b, label_b, below, extra),
            )?;
            target.variant = key;
            targets.push(target);
        }
    }
    eprintln!("bench: all targets up; warming up {} s each", plan.warmup);
    for target in &targets {
        wrk.run(target.addr, plan.threads, args.connections, plan.warmup)
            .with_context(|| format!("warm-up of {}", target.key))?;
        drain(target, Instant::now())?;
    }
    let idle = idle_cpu(&targets, Duration::from_secs(plan.warmup));

    // Closed-loop rounds, targets alternating (each round starts one target later).
    let mut rounds = Vec::new();
    for round in 0..plan.rounds {
        let count = targets.len();
        for i in 0..count {
            let target = &mut targets[(i + round) % count];
            let measured = measure(target, round, &wrk, plan, args)?;
            eprintln!(
                "bench: round {} {:<22} {:>8.0} req/s  p50 {:.3} ms  p99 {:.3} ms{}",
                round + 1,
                target.key,
                measured.requests_per_second,
                measured.wrk.latency_us.p50 as f64 / 1000.0,
                measured.wrk.latency_us.p99 as f64 / 1000.0,
                measured
                    .proxy_cpu_seconds_per_1k
                    .map_or(String::new(), |c| format!("  {c:.3} CPU s/1k")),
            );
            rounds.push(measured);
        }
    }
    let summaries: Vec<Summary> = targets
        .iter()
        .map(|t| report::summarise(t.key, t.label, &rounds))
        .collect();
    let by_key = |key: &str| {
        summaries
            .iter()
            .find(|s| s.target == key)
            .expect("measured")
    };
    let mut ratios = Vec::new();
    for key in [PASSTHROUGH, DIVERT10, INSPECT, DIVERT100] {
        ratios.push(report::ratios(by_key(key), by_key(NGINX)));
        ratios.push(report::ratios(by_key(key), by_key(DIRECT)));
    }
    if args.spool {
        ratios.push(report::ratios(by_key(DIVERT10_SPOOL), by_key(DIVERT10)));
    }
    // B against A, configuration by configuration.
    for target in targets.iter().filter(|t| t.key != t.variant) {
        ratios.push(report::ratios(by_key(target.key), by_key(target.variant)));
    }

    let single = single_connection(&targets, &wrk, plan)?;
    let sse = sse(&targets, plan.sse_samples)?;
    let mut profiles = Vec::new();
    let mut syscalls = Vec::new();
    if let Some(dir) = &args.profile {
        for key in [NGINX, DIVERT10, INSPECT] {
            syscalls.push(syscalls_per_request(
                &targets,
                key,
                &wrk,
                plan,
                args.connections,
            )?);
        }
        for key in [DIVERT10, INSPECT, DIVERT100] {
            profiles.push(profile(
                &targets,
                key,
                &wrk,
                plan,
                args.connections,
                &dir.join(key),
            )?);
        }
    }
    let served = upstream.served();
    let results = Results {
        machine,
        settings: Settings {
            quick: args.quick,
            connections: args.connections,
            wrk_threads: plan.threads,
            seconds_per_round: plan.duration,
            rounds: plan.rounds,
            single_connection_seconds: plan.single_duration,
            sse_samples: plan.sse_samples,
            upstream_answer_bytes: upstream.answer_bytes(),
            request_body_bytes: load::REQUEST_BODY.len(),
            low_confidence_every: upstream::LOW_EVERY,
            kafka: args.kafka.clone(),
            pinned: plan
                .pinning
                .as_ref()
                .map(|p| format!("proxy on CPU {}, wrk and upstream on {}", p.proxy, p.load)),
            reviewloop_b: args.reviewloop_b.clone(),
        },
        summaries,
        ratios,
        single_connection: single,
        sse,
        rounds,
        upstream_answers_served: served,
        idle,
        syscalls,
        profiles,
        finished: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        load_average_after: std::fs::read_to_string("/proc/loadavg").unwrap_or_default(),
    };
    print_report(&results);
    if let Some(path) = &args.json {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")?;
        eprintln!("bench: JSON written to {}", path.display());
    }
    let problems = anomalies(&results.summaries);
    if !problems.is_empty() {
        bail!(
            "the numbers above are not trustworthy:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}

/// What makes a run's numbers meaningless whatever the speed: failed requests, a proxy that did
/// not divert what its configuration says, review records lost.
fn anomalies(summaries: &[Summary]) -> Vec<String> {
    let mut problems = Vec::new();
    for s in summaries {
        if s.errors > 0 {
            problems.push(format!("{}: {} failed requests", s.target, s.errors));
        }
        let expected = match variant_of(s.target) {
            DIVERT10 | DIVERT10_SPOOL => Some(1.0 / upstream::LOW_EVERY as f64),
            INSPECT | PASSTHROUGH => Some(0.0),
            DIVERT100 => Some(1.0),
            _ => None,
        };
        if let (Some(expected), Some(seen)) = (expected, s.diverted_fraction)
            && (seen - expected).abs() > 0.005
        {
            problems.push(format!(
                "{}: diverted {:.2} % of requests, expected {:.2} %",
                s.target,
                seen * 100.0,
                expected * 100.0
            ));
        }
        if let Some(lost) = s.review_records_lost.filter(|lost| *lost > 0) {
            problems.push(format!("{}: {lost} review records lost", s.target));
        }
    }
    problems
}

/// One closed-loop round against `target`, with the proxy's CPU and memory, and for reviewloop
/// its review counters once every diverted record has reached the broker (or been counted lost).
fn measure(
    target: &mut Target,
    round: usize,
    wrk: &Wrk,
    plan: &Plan,
    args: &Args,
) -> anyhow::Result<Round> {
    let pid = target.process.as_ref().map(Guarded::pid);
    let before = review_counters(target)?;
    let cpu_before = pid.map(procs::cpu_seconds);
    let broker_before = args.broker_pid.map(procs::cpu_seconds);
    let started = Instant::now();
    let run = wrk.run(target.addr, plan.threads, args.connections, plan.duration)?;
    let drain_seconds = drain(target, Instant::now())?;
    let window = started.elapsed().as_secs_f64();
    let cpu = pid
        .map(procs::cpu_seconds)
        .zip(cpu_before)
        .map(|(a, b)| a - b);
    let broker_cpu = args
        .broker_pid
        .map(procs::cpu_seconds)
        .zip(broker_before)
        .map(|(a, b)| a - b);
    if let Some(process) = target.process.as_mut() {
        process.check_alive()?;
    }
    let review = match (before, review_counters(target)?) {
        (Some(b), Some(a)) => Some(ReviewCounts {
            requests: a.requests - b.requests,
            diverted: a.diverted - b.diverted,
            delivered: a.delivered - b.delivered,
            failed: a.failed - b.failed,
            skipped_queue_full: a.skipped_queue_full - b.skipped_queue_full,
            skipped_kafka_error: a.skipped_kafka_error - b.skipped_kafka_error,
            drain_seconds,
            delivered_per_second: (a.delivered - b.delivered) as f64 / window,
        }),
        _ => None,
    };
    Ok(Round {
        target: target.key,
        round: round + 1,
        requests_per_second: run.requests_per_second(),
        proxy_cpu_seconds: cpu,
        proxy_cpu_seconds_per_1k: cpu.map(|c| c / run.requests as f64 * 1000.0),
        proxy_peak_rss_bytes: pid.map(procs::peak_rss_bytes),
        broker_cpu_seconds: broker_cpu.filter(|_| target.review_topic.is_some()),
        review,
        wrk: run,
    })
}

/// reviewloop's cumulative counters (`None` for targets without an admin endpoint).
fn review_counters(target: &Target) -> anyhow::Result<Option<ReviewCounts>> {
    let (Some(admin), Some(topic)) = (target.admin, &target.review_topic) else {
        return Ok(None);
    };
    let (status, text) = load::get(admin, "/metrics")?;
    if status != 200 {
        bail!("{}: /metrics answered {status}", target.key);
    }
    let count = |name: &str, labels: &[&str]| metric_sum(&text, name, labels) as u64;
    let topic_label = format!("topic=\"{topic}\"");
    Ok(Some(ReviewCounts {
        requests: count("reviewloop_requests_total", &[]),
        diverted: count("reviewloop_reviews_diverted_total", &[]),
        delivered: count(
            "reviewloop_kafka_messages_total",
            &[&topic_label, "outcome=\"delivered\""],
        ),
        failed: count(
            "reviewloop_kafka_messages_total",
            &[&topic_label, "outcome=\"failed\""],
        ),
        skipped_queue_full: count(
            "reviewloop_reviews_skipped_total",
            &["reason=\"queue_full\""],
        ),
        skipped_kafka_error: count(
            "reviewloop_reviews_skipped_total",
            &["reason=\"kafka_error\""],
        ),
        ..ReviewCounts::default()
    }))
}

/// The review topic of the reviewloop process `key`.
fn review_topic(key: &str) -> String {
    format!("bench.review.{}.{key}", std::process::id())
}

/// One reviewloop process diverting the responses whose confidence is below `below`.
fn start_reviewloop_target(
    args: &Args,
    brokers: &str,
    (reviewloop, cpus): (&Path, Option<&str>),
    upstream: &Upstream,
    work: &Path,
    children: &Children,
    (key, label, below, extra): (
        &'static str,
        &'static str,
        &'static str,
        Option<(String, String)>,
    ),
) -> anyhow::Result<Target> {
    let topic = review_topic(key);
    let env = [
        (
            "REVIEWLOOP__UPSTREAM__URL",
            format!("http://{}", upstream.addr),
        ),
        ("REVIEWLOOP__KAFKA__BROKERS", brokers.to_owned()),
        ("REVIEWLOOP__KAFKA__REVIEW_TOPIC", topic.clone()),
        ("REVIEWLOOP__KAFKA__DELIVERY", "async".into()),
        ("REVIEWLOOP__REVIEW__CONFIDENCE_BELOW", below.into()),
        ("REVIEWLOOP__REVIEW__SAMPLE_PERCENT", "0.0".into()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let env: Vec<(String, String)> = env
        .into_iter()
        .chain(extra)
        .chain(args.reviewloop_env.clone())
        .collect();
    let Reviewloop {
        process,
        data,
        admin,
    } = procs::start_reviewloop(
        key,
        reviewloop,
        &env,
        cpus,
        work.join(format!("{key}.log")),
        children,
    )?;
    Ok(Target {
        key,
        variant: key,
        label,
        addr: data,
        process: Some(process),
        admin: Some(admin),
        review_topic: Some(topic),
    })
}

/// Waits until every record reviewloop diverted is delivered or counted as lost; the seconds
/// that took since `since`.
fn drain(target: &Target, since: Instant) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let Some(c) = review_counters(target)? else {
            return Ok(0.0);
        };
        let settled = c.delivered + c.failed + c.skipped_queue_full + c.skipped_kafka_error;
        if settled >= c.diverted {
            return Ok(since.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!(
                "{}: {} of {} diverted records still unsettled after 120 s",
                target.key,
                c.diverted - settled,
                c.diverted
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One request at a time: the median latency each proxy adds over direct.
fn single_connection(
    targets: &[Target],
    wrk: &Wrk,
    plan: &Plan,
) -> anyhow::Result<Vec<SingleConnection>> {
    let measured: Vec<&Target> = targets.iter().filter(|t| t.variant != DIVERT100).collect();
    let mut p50 = vec![Vec::new(); measured.len()];
    let mut p99 = vec![Vec::new(); measured.len()];
    let mut rps = vec![Vec::new(); measured.len()];
    for round in 0..plan.rounds {
        for i in 0..measured.len() {
            let i = (i + round) % measured.len();
            let run = wrk.run(measured[i].addr, 1, 1, plan.single_duration)?;
            p50[i].push(run.latency_us.p50 as f64);
            p99[i].push(run.latency_us.p99 as f64);
            rps[i].push(run.requests_per_second());
            drain(measured[i], Instant::now())?;
        }
    }
    let direct = report::median(&mut p50[0].clone());
    Ok(measured
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let median_p50 = report::median(&mut p50[i]);
            SingleConnection {
                target: t.key,
                label: t.label,
                p50_us: median_p50,
                p99_us: report::median(&mut p99[i]),
                requests_per_second: report::median(&mut rps[i]),
                added_p50_us: median_p50 - direct,
            }
        })
        .collect())
}

/// SSE time to first event: the upstream sends one event at once and more later; requests one at
/// a time, alternating between targets.
fn sse(targets: &[Target], samples: usize) -> anyhow::Result<Vec<Sse>> {
    let measured: Vec<&Target> = targets
        .iter()
        .filter(|t| [DIRECT, NGINX, DIVERT10].contains(&t.variant))
        .collect();
    let mut first = vec![Vec::new(); measured.len()];
    let mut end = vec![Vec::new(); measured.len()];
    for _ in 0..samples {
        for (i, target) in measured.iter().enumerate() {
            let (f, e) = load::sse_once(target.addr, upstream::SSE_PATH)?;
            first[i].push(f.as_secs_f64() * 1000.0);
            end[i].push(e.as_secs_f64() * 1000.0);
        }
    }
    let direct = report::median(&mut first[0].clone());
    Ok(measured
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let p50 = report::median(&mut first[i]);
            let p90 = first[i][((first[i].len() - 1) as f64 * 0.9) as usize];
            Sse {
                target: t.key,
                label: t.label,
                samples,
                first_event_p50_ms: p50,
                first_event_p90_ms: p90,
                stream_end_p50_ms: report::median(&mut end[i]),
                added_first_event_p50_ms: p50 - direct,
            }
        })
        .collect())
}

/// CPU a proxy uses while no request arrives (timers, Kafka client threads).
#[derive(Debug, Serialize)]
struct Idle {
    target: &'static str,
    seconds: f64,
    cpu_percent: f64,
}

fn idle_cpu(targets: &[Target], window: Duration) -> Vec<Idle> {
    let pids: Vec<(&'static str, u32)> = targets
        .iter()
        .filter_map(|t| Some((t.key, t.process.as_ref()?.pid())))
        .collect();
    let before: Vec<f64> = pids
        .iter()
        .map(|(_, pid)| procs::cpu_seconds(*pid))
        .collect();
    std::thread::sleep(window);
    pids.iter()
        .zip(before)
        .map(|((key, pid), before)| Idle {
            target: key,
            seconds: window.as_secs_f64(),
            cpu_percent: (procs::cpu_seconds(*pid) - before) / window.as_secs_f64() * 100.0,
        })
        .collect()
}

#[derive(Debug, Serialize)]
struct Profile {
    target: &'static str,
    requests_per_second: f64,
    directory: PathBuf,
    by_thread: String,
    by_object: String,
    top_symbols: String,
    /// Time in a function and everything it calls (from the unwound stacks).
    inclusive: String,
}

/// System calls and context switches per request of one proxy under the same load (perf stat
/// on the process and its children).
#[derive(Debug, Serialize)]
struct Syscalls {
    target: &'static str,
    requests: u64,
    per_request: Vec<(String, f64)>,
}

const COUNTED: &[&str] = &[
    "raw_syscalls:sys_enter",
    "context-switches",
    "cpu-migrations",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_ctl",
    "syscalls:sys_enter_futex",
    "syscalls:sys_enter_poll",
];

fn syscalls_per_request(
    targets: &[Target],
    key: &'static str,
    wrk: &Wrk,
    plan: &Plan,
    connections: usize,
) -> anyhow::Result<Syscalls> {
    let target = targets.iter().find(|t| t.key == key).expect("started");
    let pid = target.process.as_ref().expect("a process").pid();
    let seconds = plan.duration.max(3);
    // nginx's workers are children of its master: count them all.
    let pids = procs::tree(pid)
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let counter = Command::new("perf")
        .args(["stat", "-x", ",", "-e", &COUNTED.join(","), "-p", &pids])
        .args(["--", "sleep", &(seconds - 1).to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run perf (Debian: linux-perf)")?;
    let load = wrk.run(target.addr, plan.threads, connections, seconds)?;
    let output = counter.wait_with_output()?;
    drain(target, Instant::now())?;
    // The counting window is a second shorter than the load: scale requests to it.
    let requests = (load.requests as f64 * (seconds - 1) as f64 / seconds as f64) as u64;
    let per_request = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            let count: f64 = fields.first()?.parse().ok()?;
            let event = fields.get(2)?.trim_start_matches("syscalls:sys_enter_");
            Some((event.to_owned(), count / requests as f64))
        })
        .collect::<Vec<_>>();
    if per_request.is_empty() {
        bail!("perf stat counted nothing for {key}");
    }
    Ok(Syscalls {
        target: key,
        requests,
        per_request,
    })
}

/// perf (cpu-clock samples, every thread) of one reviewloop under the same load.
fn profile(
    targets: &[Target],
    key: &'static str,
    wrk: &Wrk,
    plan: &Plan,
    connections: usize,
    dir: &Path,
) -> anyhow::Result<Profile> {
    let target = targets.iter().find(|t| t.key == key).expect("started");
    let pid = target.process.as_ref().expect("a process").pid();
    std::fs::create_dir_all(dir)?;
    let data = dir.join("perf.data");
    // perf would keep the previous recording as perf.data.old: a few hundred MB per target.
    let _ = std::fs::remove_file(&data);
    let seconds = plan.duration.max(3);
    eprintln!(
        "bench: profiling {} (pid {pid}) for {seconds} s",
        target.key
    );
    let recorder = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            // Stacks unwound from .eh_frame: a release build needs no frame pointers.
            "--call-graph",
            "dwarf,16384",
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(&data)
        .args(["--", "sleep", &(seconds - 1).to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("perf-record.log"))?)
        .spawn()
        .context("cannot run perf (Debian: linux-perf)")?;
    let load = wrk.run(target.addr, plan.threads, connections, seconds)?;
    let status = recorder.wait_with_output()?.status;
    if !status.success() {
        bail!(
            "perf record failed ({status}); see {}",
            dir.join("perf-record.log").display()
        );
    }
    drain(target, Instant::now())?;
    let perf_report = |mode: &str,
                       sort: &str,
                       file: &str,
                       keep: &dyn Fn(&str) -> bool,
                       lines: usize|
     -> anyhow::Result<String> {
        let output = Command::new("perf")
            .args([
                "report",
                "--stdio",
                mode,
                "-g",
                "none",
                "--percent-limit",
                "0.5",
            ])
            .args(["--sort", sort, "-i"])
            .arg(&data)
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        std::fs::write(dir.join(file), &text)?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty() && keep(l))
            .take(lines)
            .collect::<Vec<_>>()
            .join("\n"))
    };
    let all = |_: &str| true;
    // Inclusive time of reviewloop's own functions and the crates it calls on the hot path.
    let ours = |l: &str| {
        [
            "reviewloop::",
            "hyper",
            "serde_json",
            "rd_kafka_",
            "tokio::",
        ]
        .iter()
        .any(|k| l.contains(k))
    };
    eprintln!(
        "bench: profiled {:.0} req/s; reports in {}",
        load.requests_per_second(),
        dir.display()
    );
    Ok(Profile {
        target: key,
        requests_per_second: load.requests_per_second(),
        directory: dir.to_owned(),
        by_thread: perf_report("--no-children", "comm", "by-thread.txt", &all, 12)?,
        by_object: perf_report("--no-children", "dso", "by-object.txt", &all, 12)?,
        top_symbols: perf_report("--no-children", "comm,dso,sym", "by-symbol.txt", &all, 30)?,
        inclusive: perf_report("--children", "sym", "inclusive.txt", &ours, 40)?,
    })
}

#[derive(Debug, Serialize)]
struct Machine {
    cores: usize,
    cpu_model: String,
    memory_bytes: u64,
    kernel: String,
    load_average_before: String,
    started: String,
    reviewloop: String,
    reviewloop_binary: PathBuf,
    wrk: String,
    nginx: String,
    commit: String,
}

impl Machine {
    /// `cores`: counted before `--pin` narrowed this process's affinity.
    fn describe(args: &Args, reviewloop: &Path, cores: usize) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let first_line = |program: &Path, arg: &str| {
            Command::new(program)
                .arg(arg)
                .output()
                .map(|o| {
                    let text = [o.stdout, o.stderr].concat();
                    String::from_utf8_lossy(&text)
                        .lines()
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default()
        };
        Machine {
            cores,
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_default(),
            memory_bytes: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            load_average_before: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            started: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            reviewloop: first_line(reviewloop, "--version"),
            reviewloop_binary: reviewloop.to_owned(),
            wrk: first_line(&args.wrk, "-v")
                .split(" Copyright")
                .next()
                .unwrap_or_default()
                .to_owned(),
            nginx: first_line(&args.nginx, "-v"),
            commit: Command::new("git")
                .args(["describe", "--always", "--dirty"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Settings {
    quick: bool,
    connections: usize,
    wrk_threads: usize,
    seconds_per_round: u64,
    rounds: usize,
    single_connection_seconds: u64,
    sse_samples: usize,
    upstream_answer_bytes: usize,
    request_body_bytes: usize,
    low_confidence_every: u64,
    kafka: String,
    /// `--pin`: where the proxy under test and the load ran.
    pinned: Option<String>,
    /// `--reviewloop-b`: the second binary (targets ending in `_b`).
    reviewloop_b: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Results {
    machine: Machine,
    settings: Settings,
    summaries: Vec<Summary>,
    ratios: Vec<report::Ratios>,
    single_connection: Vec<SingleConnection>,
    sse: Vec<Sse>,
    rounds: Vec<Round>,
    upstream_answers_served: u64,
    idle: Vec<Idle>,
    syscalls: Vec<Syscalls>,
    profiles: Vec<Profile>,
    finished: String,
    load_average_after: String,
}

fn print_report(results: &Results) {
    let m = &results.machine;
    let s = &results.settings;
    println!(
        "\n## Proxy benchmark ({})\n\nMachine: {} cores, {}, {:.1} GiB, Linux {}; load average before: {}.\n\
         {} ({}), {}, {}.\n\
         Load: wrk, {} connections on {} threads, {} × {} s per target (alternating), \
         POST {} of {} bytes, answers of {} bytes (1 in {} below confidence 0.7); \
         broker {}.{}{}\n",
        m.started,
        m.cores,
        m.cpu_model,
        m.memory_bytes as f64 / 1073741824.0,
        m.kernel,
        m.load_average_before,
        m.reviewloop,
        m.commit,
        m.wrk,
        m.nginx,
        s.connections,
        s.wrk_threads,
        s.rounds,
        s.seconds_per_round,
        load::PATH,
        s.request_body_bytes,
        s.upstream_answer_bytes,
        s.low_confidence_every,
        s.kafka,
        s.pinned
            .as_ref()
            .map_or(String::new(), |p| format!(" Pinned (taskset): {p}.")),
        s.reviewloop_b.as_ref().map_or(String::new(), |b| format!(
            " [B]: {} (ratios \"[B] / …\" are B over A, same run).",
            b.display()
        )),
    );
    println!(
        "### Closed loop\n\n{}",
        report::load_table(&results.summaries)
    );
    let label = |r: &report::Ratios| {
        let of = results
            .summaries
            .iter()
            .find(|s| s.target == r.target)
            .map_or(r.target, |s| s.label);
        format!("{of} / {}", r.baseline)
    };
    let rows: Vec<(String, &report::Ratios)> =
        results.ratios.iter().map(|r| (label(r), r)).collect();
    let rows: Vec<(&str, &report::Ratios)> = rows.iter().map(|(l, r)| (l.as_str(), *r)).collect();
    println!("### Ratios\n\n{}", report::ratio_table(&rows));
    for summary in &results.summaries {
        if let (Some(rate), Some(lost)) = (
            summary.review_records_per_second,
            summary.review_records_lost,
        ) {
            println!(
                "- {}: {} review records delivered ({lost} lost), {rate:.0} records/s including the drain{}",
                summary.label,
                summary.review_records_delivered.unwrap_or(0),
                summary
                    .broker_cpu_seconds_per_1k
                    .map_or(String::new(), |c| format!(
                        "; broker CPU {c:.3} s / 1k requests"
                    )),
            );
        }
    }
    println!(
        "\n### One request at a time\n\n{}",
        report::single_table(&results.single_connection)
    );
    println!(
        "### Server-sent events\n\n{}",
        report::sse_table(&results.sse)
    );
    println!(
        "Idle CPU (no requests): {}\n",
        results
            .idle
            .iter()
            .map(|i| format!("{} {:.1} %", i.target, i.cpu_percent))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !results.syscalls.is_empty() {
        let events: Vec<&str> = results.syscalls[0]
            .per_request
            .iter()
            .map(|(e, _)| e.as_str())
            .collect();
        println!(
            "### Per request under load (perf stat)\n\n| target | {} |\n|---|{}\n{}",
            events.join(" | "),
            "---:|".repeat(events.len()),
            results
                .syscalls
                .iter()
                .map(|s| format!(
                    "| {} | {} |\n",
                    s.target,
                    s.per_request
                        .iter()
                        .map(|(_, v)| format!("{v:.2}"))
                        .collect::<Vec<_>>()
                        .join(" | ")
                ))
                .collect::<String>()
        );
    }
    for profile in &results.profiles {
        println!(
            "### Profile (perf, cpu-clock, {:.0} req/s) of {}\n\n```\n{}\n\n{}\n\n{}\n\n{}\n```\n",
            profile.requests_per_second,
            profile.target,
            profile.by_thread,
            profile.by_object,
            profile.top_symbols,
            profile.inclusive,
        );
    }
}

/// A binary built next to this example (`target/<profile>/examples/bench` ⇒ `target/<profile>/NAME`).
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(name))
        .context("no directory above this executable")?;
    if !path.exists() {
        bail!(
            "{} not found: build it (cargo build --bin {name}) or pass --reviewloop",
            path.display()
        );
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{Latency, WrkErrors, WrkRun};

    fn round(target: &'static str, status_errors: u64, review: Option<(u64, u64, u64)>) -> Round {
        Round {
            target,
            round: 1,
            wrk: WrkRun {
                requests: 1000,
                duration_us: 1_000_000,
                bytes: 0,
                errors: WrkErrors {
                    connect: 0,
                    read: 0,
                    write: 0,
                    status: status_errors,
                    timeout: 0,
                },
                latency_us: Latency {
                    p50: 100,
                    p90: 200,
                    p99: 300,
                    mean: 120.0,
                    max: 400,
                },
            },
            requests_per_second: 1000.0,
            proxy_cpu_seconds: None,
            proxy_cpu_seconds_per_1k: None,
            proxy_peak_rss_bytes: None,
            review: review.map(|(requests, diverted, delivered)| ReviewCounts {
                requests,
                diverted,
                delivered,
                ..ReviewCounts::default()
            }),
            broker_cpu_seconds: None,
        }
    }

    fn problems(rounds: &[Round]) -> Vec<String> {
        let summaries: Vec<Summary> = [DIRECT, DIVERT10, INSPECT, DIVERT100]
            .iter()
            .map(|key| report::summarise(key, key, rounds))
            .collect();
        anomalies(&summaries)
    }

    #[test]
    fn a_run_that_diverts_what_it_should_and_loses_nothing_is_trusted() {
        let rounds = [
            round(DIRECT, 0, None),
            round(DIVERT10, 0, Some((1000, 100, 100))),
            round(INSPECT, 0, Some((1000, 0, 0))),
            round(DIVERT100, 0, Some((1000, 1000, 1000))),
        ];
        assert_eq!(problems(&rounds), Vec::<String>::new());
    }

    #[test]
    fn failed_requests_wrong_diversion_and_lost_records_are_named() {
        let rounds = [
            round(DIRECT, 3, None),
            round(DIVERT10, 0, Some((1000, 150, 150))),
            round(DIVERT100, 0, Some((1000, 1000, 990))),
        ];
        let found = problems(&rounds);
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(found[0].contains("3 failed requests"), "{found:?}");
        assert!(found[1].contains("diverted 15.00 %"), "{found:?}");
        assert!(found[2].contains("10 review records lost"), "{found:?}");
    }

    #[test]
    fn a_b_binary_is_held_to_its_configuration_and_passthrough_diverts_nothing() {
        let rounds = [
            round(PASSTHROUGH, 0, Some((1000, 0, 0))),
            round("reviewloop_divert_10_b", 0, Some((1000, 150, 150))),
            round("reviewloop_passthrough_b", 0, Some((1000, 10, 10))),
        ];
        let summaries: Vec<Summary> = rounds
            .iter()
            .map(|r| report::summarise(r.target, r.target, &rounds))
            .collect();
        let found = anomalies(&summaries);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("reviewloop_divert_10_b: diverted 15.00 %"),
            "{found:?}"
        );
        assert!(
            found[1].starts_with("reviewloop_passthrough_b: diverted 1.00 %"),
            "{found:?}"
        );
    }

    #[test]
    fn pinning_keeps_the_first_core_for_the_proxy() {
        assert!(Pinning::new(1).is_err());
        let two = Pinning::new(2).unwrap();
        assert_eq!((two.proxy.as_str(), two.load.as_str()), ("0", "1"));
        let four = Pinning::new(4).unwrap();
        assert_eq!(four.load, "1-3");
    }
}
