//! Driving load: wrk (closed loop, fixed connections and duration) for throughput and
//! single-connection latency, a plain-socket client for SSE time to first event, and small
//! blocking HTTP GETs for the admin endpoints.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The request every load run sends: a text-classification call as a Hugging Face client makes.
pub const PATH: &str = "/invocations";
pub const REQUEST_BODY: &str = r#"{"inputs":"I did not expect the ending, but the acting was superb.","parameters":{"top_k":null}}"#;

/// wrk's Lua script: the request, and a JSON summary line on stdout when the run is done.
pub fn wrk_script() -> String {
    format!(
        r#"wrk.method = "POST"
wrk.body = '{REQUEST_BODY}'
wrk.headers["Content-Type"] = "application/json"

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}},' ..
    '"latency_us":{{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"#
    )
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkErrors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    /// Responses with a status of 400 or more.
    pub status: u64,
    pub timeout: u64,
}

impl WrkErrors {
    pub fn total(&self) -> u64 {
        self.connect + self.read + self.write + self.status + self.timeout
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub mean: f64,
    pub max: u64,
}

/// One wrk run, as its script reports it (times in microseconds).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkRun {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    pub errors: WrkErrors,
    pub latency_us: Latency,
}

impl WrkRun {
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us as f64 / 1e6)
    }
}

pub struct Wrk<'a> {
    pub binary: &'a Path,
    pub script: &'a Path,
    /// The CPUs wrk runs on (`--pin`), away from the proxy under test.
    pub cpus: Option<&'a str>,
}

impl Wrk<'_> {
    /// `connections` connections over `threads` threads for `seconds`, against `addr`.
    pub fn run(
        &self,
        addr: SocketAddr,
        threads: usize,
        connections: usize,
        seconds: u64,
    ) -> anyhow::Result<WrkRun> {
        let output = crate::procs::command_on(self.cpus, self.binary)
            .arg(format!("-t{}", threads.min(connections)))
            .arg(format!("-c{connections}"))
            .arg(format!("-d{seconds}s"))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(self.script)
            .arg(format!("http://{addr}{PATH}"))
            .output()
            .with_context(|| format!("cannot run {}", self.binary.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "wrk failed ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WRKJSON "))
            .with_context(|| format!("wrk printed no summary: {stdout}"))?;
        let run: WrkRun = serde_json::from_str(line).context("wrk summary")?;
        if run.requests == 0 {
            bail!("wrk completed no request against {addr}: {stdout}");
        }
        Ok(run)
    }
}

/// One SSE request on a new connection: time to the first event, and to the end of the stream.
pub fn sse_once(addr: SocketAddr, path: &str) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\nConnection: close\r\n\r\n"
    )?;
    let mut received = Vec::new();
    let mut first_event = None;
    let mut buffer = [0u8; 8192];
    loop {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buffer[..n]);
        if first_event.is_none()
            && let Some(head_end) = find(&received, b"\r\n\r\n")
            && find(&received[head_end..], b"data:").is_some()
        {
            first_event = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    if !received.starts_with(b"HTTP/1.1 200") {
        bail!(
            "SSE through {addr}: {}",
            String::from_utf8_lossy(&received[..received.len().min(200)])
        );
    }
    let first = first_event.with_context(|| format!("SSE through {addr}: no event"))?;
    Ok((first, total))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A GET on a fresh connection: the status and body (admin endpoints are tiny).
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response from {addr}{path}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    Ok((status, body))
}

pub fn get_ok(addr: SocketAddr, path: &str) -> bool {
    matches!(get(addr, path), Ok((200, _)))
}

/// The sum of a Prometheus metric's samples whose labels contain every `label="value"` given.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|label| rest.contains(label)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_add_matching_series_only() {
        let text = "# HELP x\n\
            reviewloop_kafka_messages_total{outcome=\"delivered\",topic=\"a\"} 5\n\
            reviewloop_kafka_messages_total{outcome=\"failed\",topic=\"a\"} 2\n\
            reviewloop_kafka_messages_total{outcome=\"delivered\",topic=\"b\"} 7\n\
            reviewloop_kafka_messages_total_other 100\n";
        let name = "reviewloop_kafka_messages_total";
        assert_eq!(metric_sum(text, name, &[]), 14.0);
        assert_eq!(metric_sum(text, name, &["outcome=\"delivered\""]), 12.0);
        assert_eq!(metric_sum(text, "missing", &[]), 0.0);
    }
}
