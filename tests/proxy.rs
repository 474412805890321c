//! The proxy as a client sees it: transparent forwarding, streaming, capture, error answers.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use reviewloop::upstream::BoxError;
use tokio::sync::{Semaphore, mpsc};

/// An upstream that echoes what it received: method and URI in headers, the body as the body,
/// plus a model header and hop-by-hop headers the proxy must drop.
async fn echo_upstream() -> std::net::SocketAddr {
    spawn_upstream(|request: Request<hyper::body::Incoming>| async move {
        let method = request.method().to_string();
        let uri = request.uri().to_string();
        let request_id = request
            .headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let hop_seen = request.headers().contains_key("x-client-hop");
        let traceparent = request
            .headers()
            .get("traceparent")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static("none"));
        let content_type = request
            .headers()
            .get("content-type")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static("application/octet-stream"));
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Response::builder()
            .header("content-type", content_type)
            .header("x-echo-method", method)
            .header("x-echo-uri", uri)
            .header("x-echo-request-id", request_id)
            .header("x-echo-client-hop-seen", hop_seen.to_string())
            .header("x-echo-traceparent", traceparent)
            .header("x-model-version", "7")
            .header("connection", "x-upstream-hop")
            .header("x-upstream-hop", "1")
            .body(full_body(body))
            .unwrap()
    })
    .await
}

#[tokio::test]
async fn json_binary_and_large_bodies_come_back_byte_identical() {
    let proxy = spawn_proxy(config_for(echo_upstream().await)).await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let large: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for (content_type, body) in [
        (
            "application/json",
            Bytes::from_static(br#"{"inputs":"I love this"}"#),
        ),
        ("application/octet-stream", Bytes::from(binary)),
        ("application/octet-stream", Bytes::from(large)),
    ] {
        let request = Request::post(proxy.url("/invocations"))
            .header("content-type", content_type)
            .header("connection", "x-client-hop")
            .header("x-client-hop", "1")
            .body(full_body(body.clone()))
            .unwrap();
        let (parts, got) = send(request).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(got.len(), body.len());
        assert!(got == body, "body differs for {content_type}");
        assert_eq!(parts.headers["content-type"], content_type);
        assert_eq!(
            parts.headers["x-model-version"], "7",
            "upstream headers kept"
        );
        assert!(
            !parts.headers.contains_key("x-upstream-hop"),
            "hop-by-hop dropped"
        );
        assert_eq!(parts.headers["x-echo-client-hop-seen"], "false");
        let id = parts.headers["x-reviewloop-id"].to_str().unwrap();
        assert_eq!(
            parts.headers["x-echo-request-id"], id,
            "upstream sees the id"
        );
    }
    // The 5 MB body is over max_inspect_bytes (4 MiB): streamed through and counted.
    let skipped = proxy
        .metrics
        .reviews_skipped_total
        .with_label_values(&["too_large"])
        .get();
    assert_eq!(skipped, 1);
    assert_eq!(
        proxy.hook.taken().len(),
        2,
        "the two small exchanges were inspected"
    );
}

#[tokio::test]
async fn methods_paths_queries_and_client_ids_pass_through() {
    let proxy = spawn_proxy(config_for(echo_upstream().await)).await;
    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let request = Request::builder()
            .method(method)
            .uri(proxy.url("/v1/models/m:predict?verbose=1&x=%20y"))
            .header("x-request-id", "client-chose-this")
            .body(full_body(Bytes::new()))
            .unwrap();
        let (parts, _) = send(request).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(parts.headers["x-echo-method"], method);
        assert_eq!(
            parts.headers["x-echo-uri"],
            "/v1/models/m:predict?verbose=1&x=%20y"
        );
        assert_eq!(parts.headers["x-reviewloop-id"], "client-chose-this");
        assert_eq!(parts.headers["x-echo-request-id"], "client-chose-this");
    }
    // Trace context is the client's: forwarded unchanged, well formed or not.
    for traceparent in [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "not-a-trace",
    ] {
        let request = Request::post(proxy.url("/invocations"))
            .header("traceparent", traceparent)
            .body(full_body("x"))
            .unwrap();
        let (parts, _) = send(request).await;
        assert_eq!(parts.headers["x-echo-traceparent"], traceparent);
    }
    let request = Request::post(proxy.url("/invocations"))
        .header("x-amzn-sagemaker-inference-id", "sm-1")
        .body(full_body("x"))
        .unwrap();
    let (parts, _) = send(request).await;
    assert_eq!(parts.headers["x-reviewloop-id"], "sm-1");
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let proxy = spawn_proxy(config_for(echo_upstream().await)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<reviewloop::upstream::Body>();
    let response = client
        .request(post(
            &proxy.url("/invocations"),
            "application/json",
            "[1,2,3]",
        ))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "[1,2,3]");
}

#[tokio::test]
async fn chunked_bodies_stream_through_and_are_captured_at_the_end() {
    let upstream = spawn_upstream(|_| async {
        let chunks = ["[{\"label\":", "\"cat\",\"score\"", ":0.4}]"]
            .map(|c| Ok::<_, BoxError>(Frame::data(Bytes::from_static(c.as_bytes()))));
        Response::builder()
            .header("content-type", "application/json")
            .body(StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync())
            .unwrap()
    })
    .await;
    let proxy = spawn_proxy(config_for(upstream)).await;
    let (parts, body) = send(post(&proxy.url("/invocations"), "application/json", "{}")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(!parts.headers.contains_key("content-length"));
    assert_eq!(body, r#"[{"label":"cat","score":0.4}]"#);
    // The hook runs after the last frame was sent; give the spawned task a moment.
    let exchanges = wait_for_exchanges(&proxy, 1).await;
    assert_eq!(exchanges[0].response.body, body);
    assert_eq!(exchanges[0].request.body, "{}");
}

#[tokio::test]
async fn server_sent_events_are_never_held_back() {
    let (next_tx, next_rx) = mpsc::channel::<()>(1);
    let next_rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(next_rx)));
    let upstream = spawn_upstream(move |_| {
        let next_rx = next_rx.clone();
        async move {
            let mut next = next_rx.lock().await.take().expect("one request");
            let events = async_stream(move |tx| async move {
                tx.send(Bytes::from_static(b"data: {\"token\":\"Hel\"}\n\n"))
                    .await
                    .ok();
                // The second event is only sent once the client has seen the first.
                next.recv().await;
                tx.send(Bytes::from_static(b"data: {\"token\":\"lo\"}\n\n"))
                    .await
                    .ok();
                tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await.ok();
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(events)
                .unwrap()
        }
    })
    .await;
    let proxy = spawn_proxy(config_for(upstream)).await;
    let response = client()
        .request(post(
            &proxy.url("/v1/chat/completions"),
            "application/json",
            "{}",
        ))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first event arrives while the upstream still holds the second")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(first, "data: {\"token\":\"Hel\"}\n\n");
    next_tx.send(()).await.unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "data: {\"token\":\"lo\"}\n\ndata: [DONE]\n\n");
    let exchanges = wait_for_exchanges(&proxy, 1).await;
    assert!(exchanges[0].response.body.ends_with(b"data: [DONE]\n\n"));
}

#[tokio::test]
async fn gzip_bytes_reach_the_client_and_the_capture_is_decoded() {
    const JSON: &str = r#"[{"label":"cat","score":0.42,"note":"divert"}]"#;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(JSON.as_bytes()).unwrap();
    let gzipped = Bytes::from(encoder.finish().unwrap());
    let served = gzipped.clone();
    let upstream = spawn_upstream(move |_| {
        let served = served.clone();
        async move {
            Response::builder()
                .header("content-type", "application/json")
                .header("content-encoding", "gzip")
                .body(full_body(served))
                .unwrap()
        }
    })
    .await;
    let proxy = spawn_proxy(config_for(upstream)).await;
    let (parts, body) = send(post(&proxy.url("/invocations"), "application/json", "{}")).await;
    assert_eq!(parts.headers["content-encoding"], "gzip");
    assert_eq!(body, gzipped, "the client gets the encoded bytes");
    assert_eq!(parts.headers["x-reviewloop-review"], "low_confidence");
    let exchanges = proxy.hook.taken();
    assert_eq!(exchanges[0].response.body, JSON);
}

#[tokio::test]
async fn non_2xx_answers_pass_through_and_are_not_inspected() {
    let upstream = spawn_upstream(|_| async {
        Response::builder()
            .status(StatusCode::UNPROCESSABLE_ENTITY)
            .header("content-type", "application/json")
            .body(full_body(r#"{"error":"bad input","note":"divert"}"#))
            .unwrap()
    })
    .await;
    let proxy = spawn_proxy(config_for(upstream)).await;
    let (parts, body) = send(post(&proxy.url("/invocations"), "application/json", "{")).await;
    assert_eq!(parts.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body, r#"{"error":"bad input","note":"divert"}"#);
    assert!(!parts.headers.contains_key("x-reviewloop-review"));
    assert!(proxy.hook.taken().is_empty());
}

async fn error_body(parts: &http::response::Parts, body: &Bytes) -> serde_json::Value {
    assert_eq!(parts.headers["content-type"], "application/json");
    let value: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
    assert_eq!(
        value["id"],
        parts.headers["x-reviewloop-id"].to_str().unwrap()
    );
    value
}

#[tokio::test]
async fn refused_upstream_is_502_with_a_json_body() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let proxy = spawn_proxy(config_for(addr)).await;
    let (parts, body) = send(post(&proxy.url("/invocations"), "application/json", "{}")).await;
    assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        error_body(&parts, &body).await["error"],
        "upstream_unreachable"
    );
}

#[tokio::test]
async fn slow_upstream_is_504_with_a_json_body() {
    let upstream = spawn_upstream(|_| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        json_response("[]")
    })
    .await;
    let mut config = config_for(upstream);
    config.upstream.timeout = Duration::from_millis(200);
    let proxy = spawn_proxy(config).await;
    let (parts, body) = send(post(&proxy.url("/invocations"), "application/json", "{}")).await;
    assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_body(&parts, &body).await["error"], "upstream_timeout");
}

#[tokio::test]
async fn over_max_in_flight_is_503_and_the_rest_still_succeed() {
    let gate = std::sync::Arc::new(Semaphore::new(0));
    let upstream_gate = gate.clone();
    let upstream = spawn_upstream(move |_| {
        let gate = upstream_gate.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            json_response("[]")
        }
    })
    .await;
    let mut config = config_for(upstream);
    config.server.max_in_flight = 2;
    let proxy = spawn_proxy(config).await;
    let url = proxy.url("/invocations");
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(send(post(&url, "application/json", "{}"))))
        .collect();
    // Wait until both are inside the proxy.
    while proxy.metrics.requests_in_flight.get() < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (parts, body) = send(post(&url, "application/json", "{}")).await;
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_body(&parts, &body).await["error"], "overloaded");
    gate.add_permits(2);
    for request in held {
        let (parts, _) = request.await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_class() {
    let proxy = spawn_proxy(config_for(echo_upstream().await)).await;
    for path in [
        "/invocations",
        "/invocations",
        "/v2/models/bert/infer",
        "/whatever/123",
    ] {
        send(post(&proxy.url(path), "application/json", "{}")).await;
    }
    let text = proxy.metrics.render();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let count = |route: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "reviewloop_requests_total"
                    && s.labels.get("route") == Some(route)
                    && s.labels.get("code") == Some("2xx")
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => panic!("counter"),
            })
    };
    assert_eq!(count("/invocations"), Some(2.0));
    // prometheus-parse's regex stops at the first '}', so check the template label in the text.
    assert!(
        text.contains(
            "reviewloop_requests_total{code=\"2xx\",route=\"/v2/models/{model}/infer\"} 1"
        )
    );
    assert_eq!(count("other"), Some(1.0), "raw paths never become labels");
}

async fn wait_for_exchanges(proxy: &TestProxy, n: usize) -> Vec<reviewloop::exchange::Exchange> {
    for _ in 0..500 {
        if proxy.hook.exchanges.lock().unwrap().len() >= n {
            return proxy.hook.taken();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the hook never saw {n} exchange(s)");
}

/// A streamed body fed by a task through a channel.
fn async_stream<F, Fut>(producer: F) -> reviewloop::upstream::Body
where
    F: FnOnce(mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(producer(tx));
    let frames = tokio_stream_from(rx).map(|b| Ok::<_, BoxError>(Frame::data(b)));
    StreamBody::new(frames).boxed_unsync()
}

fn tokio_stream_from(
    mut rx: mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn admin_serves_metrics_health_and_readiness_apart_from_the_data_port() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let metrics = Arc::new(reviewloop::metrics::Metrics::new());
    metrics
        .requests_total
        .with_label_values(&["/invocations", "2xx"])
        .inc();
    let ready = Arc::new(AtomicBool::new(false));
    let probe = ready.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(reviewloop::admin::serve(
        listener,
        metrics,
        Arc::new(move || probe.load(Ordering::SeqCst)),
        std::future::pending(),
    ));
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        async move { send(Request::get(url).body(full_body(Bytes::new())).unwrap()).await }
    };
    let (parts, body) = get("/metrics").await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(
        parts.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("reviewloop_requests_total{code=\"2xx\",route=\"/invocations\"} 1"));
    assert_eq!(get("/healthz").await.0.status, StatusCode::OK);
    assert_eq!(
        get("/readyz").await.0.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    ready.store(true, Ordering::SeqCst);
    assert_eq!(get("/readyz").await.0.status, StatusCode::OK);
    assert_eq!(get("/nope").await.0.status, StatusCode::NOT_FOUND);
}

/// Requests spread over several serving threads, held by the upstream, then a shutdown: every
/// thread stops accepting, every held request is answered, and the serving ends.
async fn shutdown_drains_every_serving_thread(model: reviewloop::proxy::RuntimeModel) {
    use reviewloop::metrics::Metrics;
    use reviewloop::proxy::{Proxy, ProxyListener, ProxySettings, serve_on};
    use reviewloop::upstream::Upstream;

    let gate = std::sync::Arc::new(Semaphore::new(0));
    let upstream_gate = gate.clone();
    let upstream = spawn_upstream(move |_| {
        let gate = upstream_gate.clone();
        async move {
            gate.acquire().await.unwrap().forget();
            json_response(r#"[{"label":"ok","score":0.9}]"#)
        }
    })
    .await;
    let mut config = config_for(upstream);
    config.server.runtime = model;
    config.server.threads = 4;
    let checked = config.check().unwrap();
    let metrics = std::sync::Arc::new(Metrics::new());
    let hook = std::sync::Arc::new(RecordingHook::default());
    let proxy = Proxy::new(
        ProxySettings::new(&checked.config.server, checked.config.upstream.timeout),
        Upstream::from_config(&checked.config.upstream)
            .await
            .unwrap(),
        checked.routes,
        hook,
        metrics.clone(),
    );
    let listener = ProxyListener::bind(&checked.config.server).unwrap();
    let addr = listener.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(serve_on(listener, proxy, async {
        let _ = stopped.await;
    }));

    // One connection each (the kernel spreads them over the threads' listeners).
    let url = format!("http://{addr}/invocations");
    let held: Vec<_> = (0..16)
        .map(|_| tokio::spawn(send(post(&url, "application/json", "{}"))))
        .collect();
    while metrics.requests_in_flight.get() < 16 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "a serving thread still accepts after the shutdown");
    assert!(
        !serving.is_finished(),
        "the serving waits for the held requests"
    );

    gate.add_permits(16);
    for request in held {
        let (parts, body) = request.await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, r#"[{"label":"ok","score":0.9}]"#);
    }
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("every serving thread ends once its requests are answered")
        .unwrap()
        .unwrap();
    assert_eq!(metrics.requests_in_flight.get(), 0);
}

#[tokio::test]
async fn shutdown_drains_every_thread_per_core_runtime() {
    shutdown_drains_every_serving_thread(reviewloop::proxy::RuntimeModel::ThreadPerCore).await;
}

#[tokio::test]
async fn shutdown_drains_the_multi_thread_runtime() {
    shutdown_drains_every_serving_thread(reviewloop::proxy::RuntimeModel::MultiThread).await;
}

/// An upstream that counts the connections it accepted. With `close_after_each` it closes
/// each connection right after one response, without saying so (no `Connection: close`), as a
/// model server whose idle timeout is short does.
async fn counting_upstream(
    close_after_each: bool,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const ANSWER: &str = r#"[{"label":"ok","score":0.9}]"#;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    // Requests here are `{}` with a Content-Length: the head's end is enough.
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    seen.drain(..(end + 2).min(seen.len()));
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                        ANSWER.len()
                    );
                    if stream.write_all(response.as_bytes()).await.is_err() || close_after_each {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection_per_serving_thread() {
    let (upstream, accepted) = counting_upstream(false).await;
    let mut config = config_for(upstream);
    config.server.threads = 2;
    let proxy = spawn_proxy(config).await;
    // One client connection: its requests are all served by one thread, on one upstream
    // connection kept alive between them.
    let client = client();
    for _ in 0..20 {
        let response = client
            .request(post(&proxy.url("/invocations"), "application/json", "{}"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_upstream_that_closes_its_connections_is_still_answered_every_time() {
    let (upstream, accepted) = counting_upstream(true).await;
    let proxy = spawn_proxy(config_for(upstream)).await;
    let client = client();
    for _ in 0..10 {
        let response = client
            .request(post(&proxy.url("/invocations"), "application/json", "{}"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 10);
}
