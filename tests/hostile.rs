//! Bad clients against a running proxy (short `[server]` limits): partial heads, silent
//! connections, slow bodies, oversized heads, more connections than allowed, an h2c client
//! resetting streams in a loop, clients that do not read, and upstreams that stall or never
//! end. Each is closed or refused within its limit plus a margin, counted in the metrics, the
//! process's file descriptors come back to where they were, and a well-behaved client's
//! requests keep succeeding throughout.
//!
//! The tests run one at a time (they count the whole process's descriptors).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use reviewloop::config::Config;
use reviewloop::metrics::Metrics;
use reviewloop::upstream::BoxError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How much later than its limit a closure may come: generous, the point is "closed".
const MARGIN: Duration = Duration::from_secs(2);

async fn echo_upstream() -> std::net::SocketAddr {
    spawn_upstream(|request: Request<hyper::body::Incoming>| async move {
        let body = request.into_body().collect().await.unwrap().to_bytes();
        Response::builder()
            .header("content-type", "application/json")
            .body(full_body(body))
            .unwrap()
    })
    .await
}

/// Short limits so that each attack ends within seconds.
fn hostile_config(upstream: std::net::SocketAddr) -> Config {
    let mut config = config_for(upstream);
    let server = &mut config.server;
    server.header_read_timeout = Duration::from_secs(1);
    server.keepalive_timeout = Duration::from_secs(3);
    server.body_read_timeout = Duration::from_secs(1);
    server.send_timeout = Duration::from_secs(1);
    server.max_header_bytes = 8192;
    config
}

/// The process's descriptors of TCP sockets (others come and go with the test harness's
/// threads and runtimes, each of which holds a copy of tokio's signal socket).
fn open_fds() -> usize {
    let mut tcp_inodes = std::collections::HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9) {
                tcp_inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| tcp_inodes.contains(&*target.to_string_lossy()))
        .count()
}

/// Waits (up to `within`) for the process's descriptors to come back to `baseline`.
async fn fds_return_to(baseline: usize, within: Duration) -> usize {
    let started = Instant::now();
    loop {
        let now = open_fds();
        if now <= baseline || started.elapsed() > within {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn closed_count(metrics: &Metrics, reason: &str) -> u64 {
    metrics
        .proxy_connections_closed_total
        .with_label_values(&[reason])
        .get()
}

fn error_count(metrics: &Metrics, error_type: &str) -> u64 {
    metrics
        .proxy_errors_total
        .with_label_values(&[error_type])
        .get()
}

/// A well-behaved client: one request every 50 ms on a pooled keep-alive connection.
struct Steady {
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Steady {
    async fn start(url: String) -> Steady {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ok2, failures2, stop2) = (ok.clone(), failures.clone(), stop.clone());
        tokio::spawn(async move {
            let client = client();
            while !stop2.load(Ordering::Relaxed) {
                let request = post(&url, "application/json", r#"{"x":1}"#);
                match client.request(request).await {
                    Ok(response) if response.status() == StatusCode::OK => {
                        match response.into_body().collect().await {
                            Ok(_) => ok2.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failures2.lock().unwrap().push(format!("body: {e}"));
                                0
                            }
                        };
                    }
                    Ok(response) => failures2
                        .lock()
                        .unwrap()
                        .push(format!("status {}", response.status())),
                    Err(e) => failures2.lock().unwrap().push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let steady = Steady { ok, failures, stop };
        // Its connection is open before the baseline is taken.
        while steady.ok.load(Ordering::Relaxed) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        steady
    }

    fn served(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Checks that it is still served after the attack, stops it, and checks that every one
    /// of its requests succeeded.
    async fn finish(self, served_before: u64) {
        let deadline = Instant::now() + MARGIN;
        while self.served() < served_before + 5 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "the well-behaved client failed: {failures:?}"
        );
        assert!(
            self.served() >= served_before + 5,
            "the well-behaved client was not served ({} then {})",
            served_before,
            self.served()
        );
    }
}

/// Reads until the proxy closes the connection; returns what it sent and when it closed.
async fn read_until_closed(mut stream: TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (received, Some(started.elapsed())),
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => return (received, None),
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn partial_heads_and_silent_connections_are_closed_at_the_head_timeout() {
    let _serial = SERIAL.lock().await;
    let config = hostile_config(echo_upstream().await);
    let limit = config.server.header_read_timeout;
    let proxy = spawn_proxy(config).await;
    let steady = Steady::start(proxy.url("/invocations")).await;
    let baseline = open_fds();
    let served_before = steady.served();

    let mut attackers = Vec::new();
    for i in 0..150 {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        match i % 3 {
            // Half a request head, then nothing.
            0 => stream
                .write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Le")
                .await
                .unwrap(),
            // Connected and silent.
            1 => {}
            // The h2c preface and nothing more.
            _ => stream.write_all(H2_PREFACE).await.unwrap(),
        }
        attackers.push(tokio::spawn(read_until_closed(stream, limit + MARGIN)));
    }
    for attacker in attackers {
        let (_, closed) = attacker.await.unwrap();
        assert!(
            closed.is_some(),
            "a connection outlived header_read_timeout + margin"
        );
    }
    assert_eq!(closed_count(&proxy.metrics, "header_timeout"), 150);
    let after = fds_return_to(baseline, MARGIN).await;
    assert!(
        after <= baseline,
        "{after} descriptors open, {baseline} before"
    );
    assert_eq!(
        proxy.metrics.proxy_connections.get(),
        1,
        "the steady client's"
    );
    steady.finish(served_before).await;
}

#[tokio::test]
async fn idle_connections_last_until_the_keepalive_timeout_and_a_late_slow_head_does_not() {
    let _serial = SERIAL.lock().await;
    let config = hostile_config(echo_upstream().await);
    let (head, idle) = (
        config.server.header_read_timeout,
        config.server.keepalive_timeout,
    );
    let proxy = spawn_proxy(config).await;
    let request = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";

    // One request, then silence: open past the head timeout, closed at the keep-alive one.
    let mut idle_conn = TcpStream::connect(proxy.addr).await.unwrap();
    idle_conn.write_all(request).await.unwrap();
    // One request, a pause, then half of a second head: closed at the head timeout.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(request).await.unwrap();
    let mut buf = [0u8; 1024];
    for stream in [&mut idle_conn, &mut slow] {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.write_all(b"POST /invocations HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let slow_started = Instant::now();

    // An h2c connection that made one request and went quiet.
    let h2_tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, h2_conn) = h2::client::handshake(h2_tcp).await.unwrap();
    let h2_driver = tokio::spawn(h2_conn);
    let (response, _) = h2
        .send_request(
            Request::post(proxy.url("/invocations")).body(()).unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    let h2_idle_since = Instant::now();

    let idle_started = Instant::now() - Duration::from_millis(500);
    let (_, closed) = read_until_closed(slow, head + MARGIN).await;
    let slow_closed = closed.expect("a slow head on a kept-alive connection is closed");
    assert!(
        slow_started.elapsed() < idle,
        "closed at the head limit, not the idle one"
    );
    let (_, closed) = read_until_closed(idle_conn, idle + MARGIN).await;
    closed.expect("an idle connection is closed at keepalive_timeout");
    assert!(
        idle_started.elapsed() >= idle - Duration::from_millis(300),
        "an idle connection is kept for keepalive_timeout ({:?}), not cut at the head limit",
        idle_started.elapsed()
    );
    let _ = tokio::time::timeout(idle + MARGIN, h2_driver)
        .await
        .expect("an idle h2c connection is closed at keepalive_timeout");
    assert!(h2_idle_since.elapsed() >= idle - Duration::from_millis(300));
    assert!(slow_closed <= head + MARGIN);
    assert_eq!(closed_count(&proxy.metrics, "header_timeout"), 1);
    assert_eq!(closed_count(&proxy.metrics, "idle_timeout"), 2);
}

#[tokio::test]
async fn slow_request_bodies_get_408_at_the_body_timeout_on_both_protocols() {
    let _serial = SERIAL.lock().await;
    let config = hostile_config(echo_upstream().await);
    let limit = config.server.body_read_timeout;
    let proxy = spawn_proxy(config).await;
    let steady = Steady::start(proxy.url("/invocations")).await;
    let served_before = steady.served();

    // HTTP/1.1: a body trickling faster than the limit passes…
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n")
        .await
        .unwrap();
    for byte in [b"{", b"}", b" ", b" "] {
        tokio::time::sleep(limit / 2).await;
        stream.write_all(byte).await.unwrap();
    }
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // …one that stops is answered 408 and the connection closed.
    stream
        .write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(stream, limit + MARGIN).await;
    assert!(closed.is_some(), "a stalled body's connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("client_body_timeout"), "{answer}");

    // h2c: the stream is answered 408, the connection stays usable.
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let (response, mut body) = h2
        .send_request(
            Request::post(proxy.url("/invocations"))
                .header("content-length", "100")
                .body(())
                .unwrap(),
            false,
        )
        .unwrap();
    body.send_data(Bytes::from_static(b"{\"a\":"), false)
        .unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(limit + MARGIN, response)
        .await
        .expect("answered within the limit")
        .unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() >= limit - Duration::from_millis(100));
    let (response, _) = h2
        .send_request(
            Request::get(proxy.url("/invocations")).body(()).unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(response.await.unwrap().status(), StatusCode::OK);

    assert_eq!(error_count(&proxy.metrics, "client_body_timeout"), 2);
    steady.finish(served_before).await;
}

#[tokio::test]
async fn oversized_heads_are_answered_431_and_closed() {
    let _serial = SERIAL.lock().await;
    let config = hostile_config(echo_upstream().await);
    let proxy = spawn_proxy(config).await;
    let steady = Steady::start(proxy.url("/invocations")).await;
    let baseline = open_fds();
    let served_before = steady.served();
    let big = "a".repeat(16 * 1024);

    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("GET /invocations HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
    // The proxy may close before it has read all of it.
    let _ = stream.write_all(head.as_bytes()).await;
    let (answer, closed) = read_until_closed(stream, MARGIN).await;
    assert!(closed.is_some());
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get(proxy.url("/invocations"))
        .header("x-big", big.as_str())
        .body(())
        .unwrap();
    match h2.send_request(request, true) {
        Ok((response, _)) => match tokio::time::timeout(MARGIN, response)
            .await
            .expect("answered")
        {
            Ok(response) => {
                assert_eq!(
                    response.status(),
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                )
            }
            Err(e) => assert!(e.is_reset() || e.is_go_away(), "{e}"),
        },
        // The client already knows the limit the proxy advertised (SETTINGS_MAX_HEADER_LIST_SIZE).
        Err(e) => assert!(e.to_string().contains("header"), "{e}"),
    }
    drop(h2);

    assert_eq!(closed_count(&proxy.metrics, "head_too_large"), 1);
    let after = fds_return_to(baseline, MARGIN).await;
    assert!(
        after <= baseline,
        "{after} descriptors open, {baseline} before"
    );
    steady.finish(served_before).await;
}

#[tokio::test]
async fn connections_beyond_max_connections_are_refused_at_once_and_counted() {
    let _serial = SERIAL.lock().await;
    let mut config = hostile_config(echo_upstream().await);
    config.server.max_connections = 20;
    let limit = config.server.header_read_timeout;
    let proxy = spawn_proxy(config).await;
    let steady = Steady::start(proxy.url("/invocations")).await;
    let baseline = open_fds();
    let served_before = steady.served();

    // The steady client holds one slot; 19 silent sockets take the rest.
    let mut held = Vec::new();
    for _ in 0..19 {
        held.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    while proxy.metrics.proxy_connections.get() < 20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut refused = Vec::new();
    for _ in 0..30 {
        let stream = TcpStream::connect(proxy.addr).await.unwrap();
        refused.push(tokio::spawn(read_until_closed(
            stream,
            Duration::from_millis(500),
        )));
    }
    for attempt in refused {
        let (answer, closed) = attempt.await.unwrap();
        assert!(closed.is_some(), "refused at once");
        assert!(answer.is_empty());
    }
    assert_eq!(closed_count(&proxy.metrics, "over_limit"), 30);

    // The held ones end at the head timeout, and the slots are free again.
    for stream in held {
        let (_, closed) = read_until_closed(stream, limit + MARGIN).await;
        assert!(closed.is_some());
    }
    let (parts, _) = send(post(&proxy.url("/invocations"), "application/json", "{}")).await;
    assert_eq!(parts.status, StatusCode::OK);
    let after = fds_return_to(baseline, MARGIN).await;
    assert!(
        after <= baseline + 2,
        "{after} descriptors open, {baseline} before"
    );
    steady.finish(served_before).await;
}

#[tokio::test]
async fn an_h2c_client_resetting_streams_in_a_loop_gets_goaway() {
    let _serial = SERIAL.lock().await;
    let config = hostile_config(echo_upstream().await);
    let proxy = spawn_proxy(config).await;
    let steady = Steady::start(proxy.url("/invocations")).await;
    let served_before = steady.served();

    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (h2, connection) = h2::client::handshake(tcp).await.unwrap();
    let ended = tokio::spawn(connection);
    let started = Instant::now();
    let mut sent = 0;
    let mut h2 = h2;
    while sent < 100_000 {
        h2 = match h2.ready().await {
            Ok(h2) => h2,
            Err(_) => break,
        };
        let request = Request::post(proxy.url("/invocations")).body(()).unwrap();
        match h2.send_request(request, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
        sent += 1;
        if sent % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let result = tokio::time::timeout(MARGIN, ended)
        .await
        .expect("the connection ends")
        .unwrap();
    let error = result.expect_err("closed by GOAWAY");
    // The proxy closes the connection right after its GOAWAY; a client still writing its flood
    // (the proxy serves on threads of its own) may see the reset before it reads the GOAWAY.
    // Why it was closed is in the count below either way.
    assert!(
        error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(),
        "{error}"
    );
    assert!(
        sent < 100_000,
        "stopped long before: {sent} streams in {:?}",
        started.elapsed()
    );
    assert_eq!(closed_count(&proxy.metrics, "h2_reset_flood"), 1);
    steady.finish(served_before).await;
}

/// An upstream whose body never ends: 64 KiB chunks for as long as someone reads.
async fn endless_upstream() -> std::net::SocketAddr {
    static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    spawn_upstream(|_| async {
        let chunks = futures_util::stream::repeat_with(|| {
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(&CHUNK)))
        });
        Response::builder()
            .header("content-type", "application/octet-stream")
            .body(BodyExt::boxed_unsync(StreamBody::new(chunks)))
            .unwrap()
    })
    .await
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn an_endless_upstream_body_streams_in_bounded_memory_and_a_client_that_stops_reading_is_closed()
 {
    let _serial = SERIAL.lock().await;
    let config = hostile_config(endless_upstream().await);
    let send_timeout = config.server.send_timeout;
    let proxy = spawn_proxy(config).await;
    let baseline = open_fds();

    // A reader that reads 128 MiB of it: memory stays flat (the inspection copy is capped).
    let response = client()
        .request(post(&proxy.url("/invocations"), "application/json", "{}"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut read = 0usize;
    let mut rss_warm = 0;
    while read < 128 << 20 {
        let frame = body.frame().await.unwrap().unwrap();
        read += frame.data_ref().map_or(0, Bytes::len);
        if rss_warm == 0 && read >= 16 << 20 {
            rss_warm = rss_kib();
        }
    }
    let rss_end = rss_kib();
    assert!(
        rss_end < rss_warm + 16 * 1024,
        "RSS grew from {rss_warm} KiB to {rss_end} KiB while streaming"
    );
    drop(body);

    // A client that asks and never reads: closed once its writes stay blocked.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        if closed_count(&proxy.metrics, "send_timeout") == 1 {
            break;
        }
        assert!(
            started.elapsed() < send_timeout + MARGIN * 2,
            "never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stream);
    // Both the client and the upstream connections are gone.
    let after = fds_return_to(baseline, MARGIN).await;

    assert!(
        after <= baseline,
        "{after} descriptors open, {baseline} before"
    );
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_at_the_upstream_timeout() {
    let _serial = SERIAL.lock().await;
    let upstream = spawn_upstream(|_| async {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(Frame::data(Bytes::from_static(b"{\"partial\":"))))
            .await
            .unwrap();
        // The sender lives on: the body neither ends nor fails.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(BodyExt::boxed_unsync(StreamBody::new(stream)))
            .unwrap()
    })
    .await;
    let mut config = hostile_config(upstream);
    config.upstream.timeout = Duration::from_secs(1);
    let limit = config.upstream.timeout;
    let proxy = spawn_proxy(config).await;

    let response = client()
        .request(post(&proxy.url("/invocations"), "application/json", "{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let outcome = tokio::time::timeout(limit + MARGIN, response.into_body().collect())
        .await
        .expect("the body ends within upstream.timeout + margin");
    assert!(
        outcome.is_err(),
        "the client sees the body cut, not a complete one"
    );
    assert!(started.elapsed() >= limit / 2);
    assert_eq!(error_count(&proxy.metrics, "upstream_body_timeout"), 1);
}
