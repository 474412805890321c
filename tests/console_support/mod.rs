//! Helpers for the console's suites: a console started in-process on 127.0.0.1:0 (the same
//! `console::run` the binary runs) over the mock cluster, review records like the proxy writes,
//! a token file, and an HTTP session that keeps cookies like a browser.
#![allow(dead_code)] // each test file uses its own subset

pub mod browser;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::join_support::{Cluster, kafka_support};
use browser::Browser;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::message::Message;
use reviewloop::config::Config;
use reviewloop::console::{self, AuthMode, ConsoleError, RouteSettings};
use reviewloop::metrics::Metrics;
use reviewloop::record::{
    ModelInfo, Payload, Reason, ResponsePayload, ReviewRecord, rfc3339_millis,
};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A console running in this process until stopped.
pub struct TestConsole {
    pub url: String,
    pub metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ConsoleError>>,
}

impl TestConsole {
    /// Starts a console for `config` and waits until its queue is rebuilt (`/readyz`).
    pub async fn start(config: &Config) -> TestConsole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let config = config.clone();
        let task_metrics = metrics.clone();
        let task = tokio::spawn(async move {
            let bootstrap = config.kafka.brokers.clone();
            let sections = console::Sections {
                console: &config.console,
                join: &config.join,
                kafka: &config.kafka,
                shutdown_grace: config.server.shutdown_grace,
            };
            console::run(sections, &bootstrap, task_metrics, listener, async {
                let _ = stopped.await;
            })
            .await
        });
        let console = TestConsole {
            url,
            metrics,
            stop: Some(stop),
            task,
        };
        let http = Http::new(&console.url);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _, _) = http.clone().get("/readyz").await;
            if status == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "the console never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        console
    }

    pub async fn stop(mut self) -> Result<(), ConsoleError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("the console stops within 60 s")
            .expect("the console task does not panic")
    }

    /// A metric's value from the console's registry, e.g.
    /// `reviewloop_console_answers_total{route="/invocations"}`.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics
            .render()
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

/// A low-confidence review record of a ticket router: the ticket `text` as the request and a
/// Hugging Face answer scoring `labels`.
pub fn ticket(id: &str, text: &str, labels: &[(&str, f64)]) -> ReviewRecord {
    let request = serde_json::json!({ "inputs": text });
    let response: Vec<_> = labels
        .iter()
        .map(|(label, score)| serde_json::json!({"label": label, "score": score}))
        .collect();
    let confidence = labels.iter().map(|(_, s)| *s).fold(0.0, f64::max);
    record(
        id,
        ("application/json", request.to_string().as_bytes()),
        serde_json::Value::Array(response).to_string().as_bytes(),
        confidence,
    )
}

/// A low-confidence review record of `/invocations` like the proxy writes: the `request` body
/// with its content type, the model's JSON `response` and its `confidence`.
pub fn record(id: &str, request: (&str, &[u8]), response: &[u8], confidence: f64) -> ReviewRecord {
    ReviewRecord {
        id: id.to_owned(),
        time: rfc3339_millis(SystemTime::now()),
        route: "/invocations".into(),
        request: Payload::from_bytes(Some(request.0), request.1),
        response: ResponsePayload {
            status: 200,
            payload: Payload::from_bytes(Some("application/json"), response),
        },
        confidence: Some(confidence),
        reasons: vec![Reason::LowConfidence],
        sample_percent: 1.0,
        conditions: Vec::new(),
        model: ModelInfo::default(),
        truncated: false,
        traceparent: None,
        redaction: None,
    }
}

/// Produces `records` a few milliseconds apart, so that "oldest first" is their order.
pub fn produce(cluster: &Cluster, config: &Config, records: &[ReviewRecord]) {
    let producer = cluster.producer();
    for record in records {
        producer.review(config, record);
        producer.flush();
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The first `count` records the console published on the completed topic (id, reviewer,
/// answer, …), oldest first.
pub fn completed(config: &Config, count: usize) -> Vec<serde_json::Value> {
    let records: Vec<serde_json::Value> = kafka_support::consume(
        &config.kafka.brokers,
        &config.kafka.completed_topic,
        count,
        Duration::from_secs(20),
    )
    .iter()
    .map(|m| serde_json::from_slice(m.payload().expect("a payload")).expect("JSON"))
    .collect();
    assert!(
        records.len() >= count,
        "the console publishes {count} answers, not {}",
        records.len()
    );
    records
}

/// A browser, the mock cluster and its config with `auth = "none"` (reviewers sign in by
/// name), or `None` where this machine runs no browser test (see [`browser::launch`]).
pub async fn browser_on_mock() -> Option<(Browser, Cluster, Config)> {
    let browser = browser::launch().await?;
    let cluster = Cluster::mock();
    let mut config = cluster.config();
    config.console.auth = AuthMode::None;
    Some((browser, cluster, config))
}

/// Adds `route` to the console's routes with these instructions; returns its settings for the
/// test to add to.
pub fn add_route<'a>(
    config: &'a mut Config,
    route: &str,
    instructions: &str,
) -> &'a mut RouteSettings {
    let settings = config.console.routes.entry(route.to_owned()).or_default();
    settings.instructions = Some(instructions.to_owned());
    settings
}

/// Starts a console for `config` (`auth = "none"`), signs `reviewer` in through the browser
/// and opens the task page.
pub async fn review_as(config: &Config, browser: &Browser, reviewer: &str) -> TestConsole {
    let console = TestConsole::start(config).await;
    browser.sign_in(&console.url, reviewer, None).await;
    browser.goto(&format!("{}/task", console.url)).await;
    console
}

/// The four teams of the demo's ticket router, the model unsure between them.
pub const TEAMS: [(&str, f64); 4] = [
    ("shipping", 0.42),
    ("billing", 0.31),
    ("technical", 0.17),
    ("account", 0.10),
];

/// A token file for `reviewers` (name, token).
pub fn tokens_file(dir: &Path, reviewers: &[(&str, &str)]) -> PathBuf {
    let path = dir.join("reviewers");
    let lines: String = reviewers
        .iter()
        .map(|(name, token)| {
            format!(
                "{name} sha256:{}\n",
                hex::encode(Sha256::digest(token.as_bytes()))
            )
        })
        .collect();
    std::fs::write(&path, lines).unwrap();
    path
}

/// An HTTP client that keeps cookies and may send a fixed header (an SSO proxy's).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
    cookies: BTreeMap<String, String>,
    headers: Vec<(String, String)>,
}

pub struct Page {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The value of the first form field named `name` (`<input … name="x" value="…">`).
    pub fn field(&self, name: &str) -> Option<String> {
        let marker = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('"')? + start;
        Some(
            self.body[start..end]
                .replace("&amp;", "&")
                .replace("&quot;", "\""),
        )
    }

    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: base.to_owned(),
            cookies: BTreeMap::new(),
            headers: Vec::new(),
        }
    }

    /// Sends `name: value` with every request.
    pub fn with_header(mut self, name: &str, value: &str) -> Http {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub async fn get(&mut self, path: &str) -> (StatusCode, HeaderMap, String) {
        let page = self.send("GET", path, None).await;
        (page.status, page.headers, page.body)
    }

    pub async fn page(&mut self, path: &str) -> Page {
        self.send("GET", path, None).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let body: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        self.send("POST", path, Some(body)).await
    }

    async fn send(&mut self, method: &str, path: &str, body: Option<String>) -> Page {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        if !self.cookies.is_empty() {
            let cookie = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            request = request.header("cookie", cookie);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if body.is_some() {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let response = self.client.request(request).await.expect("console answers");
        for set_cookie in response.headers().get_all("set-cookie") {
            let text = set_cookie.to_str().unwrap();
            let pair = text.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Page {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    /// Signs in through the form (`auth = "tokens"` or `"none"`).
    pub async fn sign_in(&mut self, name: &str, token: &str) -> Page {
        let form = self.page("/signin").await;
        let csrf = form
            .field("csrf")
            .expect("the sign-in form has a CSRF token");
        self.post(
            "/signin",
            &[("csrf", &csrf), ("name", name), ("token", token)],
        )
        .await
    }
}
