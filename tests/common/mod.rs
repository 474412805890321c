//! Test harness: the proxy started in-process on 127.0.0.1:0 (the same `proxy::serve_on` the
//! binary runs), scripted upstream servers, and an HTTP client.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use reviewloop::app::{self, App, Roles, Shutdown};
use reviewloop::config::Config;
use reviewloop::exchange::{BoxFuture, Exchange, ExchangeHook, Verdict};
use reviewloop::metrics::Metrics;
use reviewloop::proxy::{self, Proxy, ProxyListener, ProxySettings, RuntimeModel};
use reviewloop::record::Reason;
use reviewloop::upstream::{Body, Upstream};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use reviewloop::upstream::full_body;

/// A running proxy; dropping it shuts it down.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub hook: Arc<RecordingHook>,
    stop: Option<oneshot::Sender<()>>,
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Records every exchange; diverts (reason `low_confidence`) those whose response body contains
/// `"divert"` — enough to test the proxy's side of the seam without the decision engine.
#[derive(Default)]
pub struct RecordingHook {
    pub exchanges: Mutex<Vec<Exchange>>,
}

impl RecordingHook {
    pub fn taken(&self) -> Vec<Exchange> {
        std::mem::take(&mut *self.exchanges.lock().unwrap())
    }
}

impl ExchangeHook for RecordingHook {
    fn on_exchange(&self, exchange: Exchange) -> BoxFuture<Verdict> {
        let divert = exchange.response.body.windows(6).any(|w| w == b"divert");
        self.exchanges.lock().unwrap().push(exchange);
        Box::pin(async move {
            Verdict {
                reasons: if divert {
                    vec![Reason::LowConfidence]
                } else {
                    vec![]
                },
            }
        })
    }
}

/// A config pointing at `upstream`, listening on loopback port 0. The proxy's runtime model
/// is the default unless `REVIEWLOOP__SERVER__RUNTIME` names one (as it would for the
/// binary): `REVIEWLOOP__SERVER__RUNTIME=multi_thread cargo test --test proxy` runs the same
/// tests on the other model.
pub fn config_for(upstream: SocketAddr) -> Config {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.upstream.url = format!("http://{upstream}");
    if let Ok(model) = std::env::var("REVIEWLOOP__SERVER__RUNTIME") {
        config.server.runtime = toml::Value::String(model)
            .try_into::<RuntimeModel>()
            .expect("REVIEWLOOP__SERVER__RUNTIME is thread_per_core or multi_thread");
    }
    config
}

pub async fn spawn_proxy(config: Config) -> TestProxy {
    let hook = Arc::new(RecordingHook::default());
    spawn_proxy_with(config, hook.clone(), hook).await
}

pub async fn spawn_proxy_with(
    config: Config,
    hook: Arc<dyn ExchangeHook>,
    recording: Arc<RecordingHook>,
) -> TestProxy {
    let upstream = Upstream::from_config(&config.upstream).await.unwrap();
    spawn_proxy_on(config, upstream, hook, recording).await
}

/// [`spawn_proxy_with`] in front of an upstream built by the test.
pub async fn spawn_proxy_on(
    config: Config,
    upstream: Upstream,
    hook: Arc<dyn ExchangeHook>,
    recording: Arc<RecordingHook>,
) -> TestProxy {
    let checked = config.check().expect("a valid test configuration");
    let metrics = Arc::new(Metrics::new());
    let proxy = Proxy::new(
        ProxySettings::new(&checked.config.server, checked.config.upstream.timeout),
        upstream,
        checked.routes,
        hook,
        metrics.clone(),
    );
    let mut server = checked.config.server.clone();
    server.listen = "127.0.0.1:0".parse().unwrap();
    let listener = ProxyListener::bind(&server).unwrap();
    let addr = listener.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy::serve_on(listener, proxy, async {
        let _ = stopped.await;
    }));
    TestProxy {
        addr,
        metrics,
        hook: recording,
        stop: Some(stop),
    }
}

/// Starts an upstream on 127.0.0.1:0 answering with `handler`.
pub async fn spawn_upstream<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, Infallible>(response.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends `request` and reads the whole response.
pub async fn send(request: Request<Body>) -> (http::response::Parts, Bytes) {
    let response = client().request(request).await.expect("proxy answers");
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.expect("whole body").to_bytes())
}

pub fn post(url: &str, content_type: &str, body: impl Into<Bytes>) -> Request<Body> {
    Request::post(url)
        .header("content-type", content_type)
        .body(full_body(body.into()))
        .unwrap()
}

pub fn json_response(body: &'static str) -> Response<Body> {
    Response::builder()
        .header("content-type", "application/json")
        .body(full_body(body))
        .unwrap()
}

/// The full proxy (decision + Kafka sink) as `reviewloop proxy` runs it, on a mock cluster.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub bootstrap: String,
    pub config: Config,
    pub sink: Arc<reviewloop::kafka::ReviewSink>,
    shutdown: Shutdown,
    _running: app::Running,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.fire();
    }
}

/// Starts the whole proxy with `config.kafka.brokers = "embedded"` unless it names brokers.
pub async fn spawn_app(config: Config) -> TestApp {
    let upstream = Upstream::from_config(&config.upstream).await.unwrap();
    spawn_app_on(config, upstream).await
}

/// [`spawn_app`] in front of an upstream built by the test.
pub async fn spawn_app_on(mut config: Config, upstream: Upstream) -> TestApp {
    if config.kafka.brokers == Config::default().kafka.brokers {
        config.kafka.brokers = "embedded".into();
    }
    let checked = config.clone().check().expect("a valid test configuration");
    let shutdown = Shutdown::new();
    let running = App::build_on(checked, Roles::PROXY, upstream)
        .await
        .unwrap()
        .spawn(shutdown.clone());
    TestApp {
        addr: running.proxy_address().unwrap(),
        metrics: running.metrics().clone(),
        bootstrap: running.bootstrap().to_owned(),
        config,
        sink: running.sink().unwrap().clone(),
        shutdown,
        _running: running,
    }
}

/// An upstream that answers Hugging-Face-shaped JSON whose score is the request's `score`.
pub async fn scoring_upstream() -> SocketAddr {
    spawn_upstream(|request: Request<Incoming>| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let input: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let score = input["score"].as_f64().unwrap_or(0.99);
        let answer = serde_json::json!([{"label": "cat", "score": score}]).to_string();
        Response::builder()
            .header("content-type", "application/json")
            .body(full_body(answer))
            .unwrap()
    })
    .await
}

/// Echoes a child process's stderr and sends `(marker, value)` for each line that contains
/// `marker` and `key=value` (the value up to the next space): how tests learn the addresses a
/// `reviewloop` process listens on.
pub fn watch_log(
    stderr: impl std::io::Read + Send + 'static,
    wanted: &'static [(&'static str, &'static str)],
) -> std::sync::mpsc::Receiver<(&'static str, String)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            eprintln!("reviewloop: {line}");
            for (marker, key) in wanted {
                if line.contains(marker)
                    && let Some(value) = line.split(&format!("{key}=")).nth(1)
                {
                    let value = value.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send((*marker, value));
                }
            }
        }
    });
    rx
}
