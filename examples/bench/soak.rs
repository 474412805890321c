//! `--soak REQUESTS`: a long run through one reviewloop diverting 10 % of responses to the
//! broker, printing its resident memory after the warm-up and at the end. Memory that grows
//! with the number of requests (a leak, an unbounded map) shows as the difference; nothing is
//! asserted, the numbers are the result.

use std::time::Instant;

use anyhow::{Context, bail};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::load::Wrk;
use crate::{Target, drain, review_counters};

/// librdkafka's mock cluster with the review topic, for a soak without a broker process.
pub struct MockKafka(MockCluster<'static, DefaultProducerContext>);

impl MockKafka {
    pub fn start(topic: &str) -> anyhow::Result<MockKafka> {
        let cluster = MockCluster::new(1).context("mock Kafka cluster")?;
        cluster
            .create_topic(topic, 3, 1)
            .context("mock review topic")?;
        Ok(MockKafka(cluster))
    }

    pub fn bootstrap(&self) -> String {
        self.0.bootstrap_servers()
    }
}

/// Seconds of load per step; RSS is printed after each.
const STEP_SECONDS: u64 = 30;

/// The resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    match status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    {
        Some(kib) => Ok(kib),
        None => bail!("no VmRSS in /proc/{pid}/status"),
    }
}

pub fn soak(
    target: &Target,
    wrk: &Wrk,
    threads: usize,
    connections: usize,
    warmup_seconds: u64,
    requests: u64,
) -> anyhow::Result<()> {
    let pid = target
        .process
        .as_ref()
        .map(|p| p.pid())
        .expect("a reviewloop target");
    let started = Instant::now();
    let warm = wrk.run(target.addr, threads, connections, warmup_seconds)?;
    drain(target, Instant::now())?;
    let rss_warm = rss_kib(pid)?;
    eprintln!(
        "soak: warm-up {} requests; RSS {:.1} MiB",
        warm.requests,
        rss_warm as f64 / 1024.0
    );
    let (mut done, mut errors) = (0u64, 0u64);
    while done < requests {
        let run = wrk.run(target.addr, threads, connections, STEP_SECONDS)?;
        done += run.requests;
        errors += run.errors.total();
        eprintln!(
            "soak: {done} requests ({:.0} req/s, {} errors so far); RSS {:.1} MiB",
            run.requests_per_second(),
            errors,
            rss_kib(pid)? as f64 / 1024.0
        );
    }
    drain(target, Instant::now())?;
    let rss_end = rss_kib(pid)?;
    let counts = review_counters(target)?.unwrap_or_default();
    println!(
        "soak: {done} requests after the warm-up in {:.0} s, {errors} errors; {} diverted, {} \
         delivered to Kafka; RSS after warm-up {:.1} MiB, at the end {:.1} MiB ({:+.1} MiB)",
        started.elapsed().as_secs_f64(),
        counts.diverted,
        counts.delivered,
        rss_warm as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        (rss_end as f64 - rss_warm as f64) / 1024.0
    );
    // As the comparison does: a run with failures or another diversion rate proves nothing.
    let share = counts.diverted as f64 / counts.requests.max(1) as f64;
    if errors > 0 || (share - 0.10).abs() > 0.005 || counts.delivered < counts.diverted {
        bail!(
            "soak not trustworthy: {errors} failed requests, {:.2} % diverted, {} of {} delivered",
            share * 100.0,
            counts.delivered,
            counts.diverted
        );
    }
    Ok(())
}
