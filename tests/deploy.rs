//! The deployment artefacts under `deploy/` against the binary they deploy: the cluster's
//! `reviewloop.toml` is a valid configuration, and every metric the Grafana dashboard and the
//! Prometheus rules name is in the `/metrics` of a `reviewloop run` started with that file, so a
//! renamed metric fails here instead of leaving an empty panel or an alert that never fires.
//! (scripts/check-deploy validates the rest: schemas, PromQL, the rules' unit tests.)

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::Request;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const CLUSTER_CONFIG: &str = "deploy/kubernetes/base/reviewloop.toml";
const DASHBOARD: &str = "deploy/grafana/reviewloop.json";
const RULES: &str = "deploy/prometheus/rules.yml";

/// Kills the child if the test ends before it was stopped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `reviewloop_…` metric names in a dashboard or rules file: identifiers that start with
/// `reviewloop_`, leaving out recording-rule names (which contain `:`).
fn metric_names_in(path: &str) -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo_file(path)).unwrap();
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("reviewloop_") && !word.contains(':'))
        .map(str::to_owned)
        .collect()
}

/// Every series name a query can select in a Prometheus text exposition: each family (and a
/// histogram's `_bucket`, `_sum` and `_count`) and each sample's name.
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let mut parts = declaration.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    names
}

async fn get(url: &str) -> (http::StatusCode, String) {
    let request = Request::get(url).body(full_body("")).unwrap();
    let (parts, body) = send(request).await;
    (parts.status, String::from_utf8(body.to_vec()).unwrap())
}

#[test]
fn the_cluster_config_is_valid() {
    let output = Command::new(env!("CARGO_BIN_EXE_reviewloop"))
        .args(["check-config", repo_file(CLUSTER_CONFIG).to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{CLUSTER_CONFIG}: {stderr}");
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_rules_name_is_exported() {
    let upstream = scoring_upstream().await;
    // The pod's configuration file; only what must differ on a test machine is overridden.
    let child = Command::new(env!("CARGO_BIN_EXE_reviewloop"))
        .args([
            "run",
            "--config",
            repo_file(CLUSTER_CONFIG).to_str().unwrap(),
        ])
        .env("REVIEWLOOP__SERVER__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__CONSOLE__LISTEN", "127.0.0.1:0")
        .env("REVIEWLOOP__UPSTREAM__URL", format!("http://{upstream}"))
        .env("REVIEWLOOP__KAFKA__BROKERS", "embedded")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    let log = watch_log(
        child.0.stderr.take().unwrap(),
        &[
            ("proxy listening", "address"),
            ("admin listening", "address"),
            ("embedded Kafka broker started", "bootstrap"),
        ],
    );
    let (mut proxy, mut admin, mut bootstrap) = (None, None, None);
    while proxy.is_none() || admin.is_none() || bootstrap.is_none() {
        match log
            .recv_timeout(Duration::from_secs(60))
            .expect("run starts")
        {
            ("proxy listening", value) => proxy = Some(value),
            ("admin listening", value) => admin = Some(value),
            (_, value) => bootstrap = Some(value),
        }
    }
    let (proxy, admin, bootstrap) = (proxy.unwrap(), admin.unwrap(), bootstrap.unwrap());

    // The loop once around, as in production: a confident answer, an uncertain one sent to
    // review, a reviewer's answer joined into a retraining record.
    let invocations = format!("http://{proxy}/invocations");
    let (confident, _) = send(post(&invocations, "application/json", r#"{"score":0.95}"#)).await;
    assert_eq!(confident.status, 200);
    let (uncertain, _) = send(post(&invocations, "application/json", r#"{"score":0.3}"#)).await;
    // The pod's config also audits 1 % by id: this one may be sampled as well.
    let reasons = uncertain.headers["x-reviewloop-review"].to_str().unwrap();
    assert!(
        reasons.split(',').any(|r| r == "low_confidence"),
        "{reasons}"
    );
    let id = uncertain.headers["x-reviewloop-id"].to_str().unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let answer = serde_json::json!({
        "id": id, "reviewer": "alice", "answer": {"label": "cat"},
        "submitted_at": "2026-11-22T10:00:00.000Z"
    })
    .to_string();
    producer
        .send(
            FutureRecord::to("reviewloop.completed")
                .key(id)
                .payload(&answer),
            Duration::from_secs(10),
        )
        .await
        .expect("answer published");

    let metrics_url = format!("http://{admin}/metrics");
    let deadline = Instant::now() + Duration::from_secs(60);
    let exposition = loop {
        let (status, text) = get(&metrics_url).await;
        assert_eq!(status, 200);
        if text.contains("reviewloop_retraining_records_total 1") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no retraining record within 60 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let exposed = exposed_names(&exposition);

    let mut missing = Vec::new();
    for file in [DASHBOARD, RULES] {
        let named = metric_names_in(file);
        assert!(
            named.len() >= 5,
            "{file} names only {named:?}: is the name scan broken?"
        );
        missing.extend(
            named
                .difference(&exposed)
                .map(|name| format!("{name} (in {file})")),
        );
    }
    assert!(
        missing.is_empty(),
        "named in deploy/ but not in /metrics of `reviewloop run`:\n  {}\n\n/metrics:\n{exposition}",
        missing.join("\n  ")
    );

    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    // Blocking is fine here: nothing else on this runtime is needed any more.
    let exit = child.0.wait().unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "reviewloop run exits cleanly on SIGTERM"
    );
}
