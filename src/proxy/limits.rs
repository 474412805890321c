//! Defences against slow, broken and hostile clients: a cap on open connections, deadlines on
//! each connection (request head, idle keep-alive, blocked writes), a stall timeout for bodies,
//! and hyper's limits on head sizes and HTTP/2 streams, pings and resets.
//!
//! The deadlines are kept here rather than by hyper: hyper's HTTP/1 `header_read_timeout`
//! starts as soon as a connection waits for a head, so it would also cut idle keep-alive
//! connections at the head limit, and it covers neither h2c nor the protocol sniffing that
//! comes before both. Watching a connection's reads, writes and requests gives one set of
//! rules for HTTP/1.1 and h2c:
//! - a new connection sends its first request head within `header_read_timeout`;
//! - a connection with no request in progress is closed after `keepalive_timeout`; on
//!   HTTP/1.1 its next head, once a first byte came, must be complete within
//!   `header_read_timeout` (HTTP/2 frames arrive on idle connections, pings for one);
//! - a write to the client blocked for `send_timeout` closes the connection.

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

use super::ServerConfig;
use crate::metrics::Metrics;
use crate::upstream::BoxError;

/// Why the proxy closed or refused a client connection
/// (`reviewloop_proxy_connections_closed_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// `max_connections` were open: refused at once.
    OverLimit,
    /// No complete request head within `header_read_timeout`.
    HeaderTimeout,
    /// No request for `keepalive_timeout`.
    IdleTimeout,
    /// A write to the client stayed blocked for `send_timeout`.
    SendTimeout,
    /// A request head over `max_header_bytes` (answered 431 first).
    HeadTooLarge,
    /// HTTP/2 streams reset faster than `h2_max_pending_accept_reset_streams` allows, or too
    /// many protocol errors: GOAWAY ENHANCE_YOUR_CALM.
    H2ResetFlood,
    /// An HTTP/2 keep-alive ping went unanswered for `h2_keepalive_timeout`.
    H2PingTimeout,
}

impl CloseReason {
    /// Whether closing a connection for this reason is worth a warning; `sent_nothing`: the
    /// client never sent a byte. Such a connection reaching the head deadline is a browser's
    /// preconnect or a client pool's spare, normal traffic: counted, not warned about.
    fn warned(self, sent_nothing: bool) -> bool {
        !(sent_nothing && self == CloseReason::HeaderTimeout)
    }

    pub const ALL: [CloseReason; 7] = [
        CloseReason::OverLimit,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::SendTimeout,
        CloseReason::HeadTooLarge,
        CloseReason::H2ResetFlood,
        CloseReason::H2PingTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::OverLimit => "over_limit",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::SendTimeout => "send_timeout",
            CloseReason::HeadTooLarge => "head_too_large",
            CloseReason::H2ResetFlood => "h2_reset_flood",
            CloseReason::H2PingTimeout => "h2_ping_timeout",
        }
    }

    /// The reason a connection that hyper ended with `error` was closed at a limit, if it was.
    fn of_error(error: &(dyn StdError + 'static)) -> Option<CloseReason> {
        let hyper = error.downcast_ref::<hyper::Error>()?;
        if hyper.is_parse_too_large() {
            return Some(CloseReason::HeadTooLarge);
        }
        // hyper's only timer left on a server connection is the HTTP/2 keep-alive ping.
        if hyper.is_timeout() {
            return Some(CloseReason::H2PingTimeout);
        }
        let mut source = hyper.source();
        while let Some(e) = source {
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                return (h2.is_library() && h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
                    .then_some(CloseReason::H2ResetFlood);
            }
            source = e.source();
        }
        None
    }
}

/// How long one warning about closed connections covers: a burst of hundreds of sockets is
/// one line, the metric has the exact counts.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts closures and logs them at most once per [`LOG_EVERY`], with the counts since the
/// previous line.
struct BurstLog {
    server: &'static str,
    counts: [AtomicU64; CloseReason::ALL.len()],
    last: Mutex<Option<Instant>>,
}

impl BurstLog {
    fn note(&self, reason: CloseReason) {
        self.counts[reason as usize].fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().expect("not poisoned");
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return;
        }
        *last = Some(now);
        let counts = CloseReason::ALL
            .iter()
            .filter_map(|r| {
                let n = self.counts[*r as usize].swap(0, Ordering::Relaxed);
                (n > 0).then(|| format!("{}={n}", r.as_str()))
            })
            .collect::<Vec<_>>()
            .join(" ");
        warn!(
            server = self.server,
            %counts,
            "client connections closed at [server] limits (logged at most every 10 s; counts since the last such line)"
        );
    }
}

/// One server's connection limits: admission under `max_connections`, the deadlines, the
/// hyper builder with the protocol limits, and the counting.
pub struct Connections {
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
    send_timeout: Duration,
    slots: Arc<Semaphore>,
    builder: auto::Builder<TokioExecutor>,
    metrics: Option<Arc<Metrics>>,
    log: BurstLog,
}

impl Connections {
    /// `server` names it in logs; `metrics`, when given, receive the proxy's connection
    /// metrics (the proxy's port only, so the series mean one thing).
    pub fn new(
        config: &ServerConfig,
        server: &'static str,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<Connections> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // The head deadline is kept here (see the module doc).
            .header_read_timeout(None)
            // A head that fills the read buffer without ending is answered 431.
            .max_buf_size(config.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.h2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(config.h2_keepalive_interval)
            .keep_alive_timeout(config.h2_keepalive_timeout)
            .max_pending_accept_reset_streams(config.h2_max_pending_accept_reset_streams)
            .max_local_error_reset_streams(config.h2_max_local_error_reset_streams);
        if let Some(metrics) = &metrics {
            for reason in CloseReason::ALL {
                metrics
                    .proxy_connections_closed_total
                    .with_label_values(&[reason.as_str()]);
            }
        }
        Arc::new(Connections {
            header_read_timeout: config.header_read_timeout,
            keepalive_timeout: config.keepalive_timeout,
            send_timeout: config.send_timeout,
            slots: Arc::new(Semaphore::new(config.max_connections)),
            builder,
            metrics,
            log: BurstLog {
                server,
                counts: Default::default(),
                last: Mutex::new(None),
            },
        })
    }

    /// The hyper builder carrying the protocol limits.
    pub fn builder(&self) -> &auto::Builder<TokioExecutor> {
        &self.builder
    }

    /// Takes a slot for a new connection, or refuses it (closed at once, counted) when
    /// `max_connections` are open. Refusing rather than leaving it in the listen backlog keeps
    /// the backlog from filling with sockets whose clients have long given up, and tells a
    /// client at once to retry later or elsewhere.
    pub fn admit(
        self: &Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<(TokioIo<Watched<TcpStream>>, Admitted)> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.closed(CloseReason::OverLimit);
            return None;
        };
        let _ = stream.set_nodelay(true);
        if let Some(metrics) = &self.metrics {
            metrics.proxy_connections.inc();
        }
        let activity = Activity(Arc::new(Watch {
            state: Mutex::new(State {
                phase: Phase::Head {
                    since: Instant::now(),
                },
                protocol: Protocol::Unknown,
                write_blocked_since: None,
            }),
            write_blocked: AtomicBool::new(false),
            changed: Notify::new(),
        }));
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let admitted = Admitted {
            connections: self.clone(),
            activity,
            peer,
            _permit: permit,
        };
        Some((io, admitted))
    }

    fn closed(&self, reason: CloseReason) {
        self.count(reason);
        self.log.note(reason);
    }

    /// A connection closed at the head deadline without having sent a byte: a browser's
    /// preconnect or a client pool's spare, normal traffic, so counted but not warned about.
    fn closed_silent(&self, peer: SocketAddr) {
        self.count(CloseReason::HeaderTimeout);
        debug!(%peer, "closing a client connection that sent nothing");
    }

    fn count(&self, reason: CloseReason) {
        if let Some(metrics) = &self.metrics {
            metrics
                .proxy_connections_closed_total
                .with_label_values(&[reason.as_str()])
                .inc();
        }
    }

    /// When and why the connection is to be closed if nothing changes before then.
    fn deadline(&self, state: &State) -> Option<(Instant, CloseReason)> {
        let phase = match state.phase {
            Phase::Head { since } => {
                Some((since + self.header_read_timeout, CloseReason::HeaderTimeout))
            }
            Phase::Idle { since } => Some((since + self.keepalive_timeout, CloseReason::IdleTimeout)),
            Phase::Busy { .. } => None,
        };
        let send = state
            .write_blocked_since
            .map(|since| (since + self.send_timeout, CloseReason::SendTimeout));
        match (phase, send) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// An admitted connection: holds its slot under `max_connections` until dropped.
pub struct Admitted {
    connections: Arc<Connections>,
    activity: Activity,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl Admitted {
    /// The handle the connection's service marks its requests with.
    pub fn activity(&self) -> Activity {
        self.activity.clone()
    }

    /// Drives `connection` (hyper's) to its end or until a deadline passes, when it is
    /// dropped, which closes the socket. Either way the closure is counted if a limit caused it.
    pub async fn drive<F>(self, connection: F)
    where
        F: Future<Output = Result<(), BoxError>>,
    {
        tokio::pin!(connection);
        let watch = &self.activity.0;
        loop {
            let deadline = self
                .connections
                .deadline(&watch.state.lock().expect("not poisoned"));
            let changed = watch.changed.notified();
            let expired = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = &mut connection => {
                    if let Err(e) = ended {
                        match CloseReason::of_error(&*e) {
                            Some(reason) => self.connections.closed(reason),
                            None => debug!(peer = %self.peer, error = %e, "client connection ended with an error"),
                        }
                    }
                    return;
                }
                () = changed => {}
                () = expired => {
                    let (now, silent) = {
                        let state = watch.state.lock().expect("not poisoned");
                        (self.connections.deadline(&state), state.protocol == Protocol::Unknown)
                    };
                    if let Some((at, reason)) = now
                        && at <= Instant::now()
                    {
                        if !reason.warned(silent) {
                            self.connections.closed_silent(self.peer);
                        } else {
                            debug!(peer = %self.peer, reason = reason.as_str(), "closing a client connection");
                            self.connections.closed(reason);
                        }
                        return;
                    }
                }
            }
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some(metrics) = &self.connections.metrics {
            metrics.proxy_connections.dec();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head that must be complete by `since + header_read_timeout`.
    Head { since: Instant },
    /// No request in progress and, on HTTP/1.1, no byte of the next one yet.
    Idle { since: Instant },
    /// Requests in progress (their bodies have their own stall timeout).
    Busy { requests: usize },
}

struct State {
    phase: Phase,
    protocol: Protocol,
    write_blocked_since: Option<Instant>,
}

struct Watch {
    state: Mutex<State>,
    /// Mirrors `write_blocked_since.is_some()`, so that a write only locks when it changes.
    write_blocked: AtomicBool,
    /// Wakes the connection's driver when a deadline may have moved earlier.
    changed: Notify,
}

/// What a connection is doing, as its reads, writes and service report it.
#[derive(Clone)]
pub struct Activity(Arc<Watch>);

impl Activity {
    /// A request head was read; the connection is busy until the guard (carried by the
    /// response body) is dropped.
    pub fn request_started(&self) -> RequestGuard {
        let mut state = self.0.state.lock().expect("not poisoned");
        state.phase = match state.phase {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        };
        RequestGuard(self.clone())
    }

    fn read(&self, bytes: &[u8]) {
        const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
        let mut state = self.0.state.lock().expect("not poisoned");
        if state.protocol == Protocol::Unknown {
            let n = bytes.len().min(H2_PREFACE.len());
            state.protocol = if bytes[..n] == H2_PREFACE[..n] {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
        }
        if let Phase::Idle { .. } = state.phase
            && state.protocol == Protocol::Http1
        {
            state.phase = Phase::Head {
                since: Instant::now(),
            };
            self.0.changed.notify_one();
        }
    }

    fn write_blocked(&self, blocked: bool) {
        if self.0.write_blocked.swap(blocked, Ordering::Relaxed) == blocked {
            return;
        }
        let mut state = self.0.state.lock().expect("not poisoned");
        state.write_blocked_since = blocked.then(Instant::now);
        if blocked {
            self.0.changed.notify_one();
        }
    }
}

/// Marks one request in progress on its connection.
pub struct RequestGuard(Activity);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let watch = &(self.0).0;
        let mut state = watch.state.lock().expect("not poisoned");
        state.phase = match state.phase {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        };
        watch.changed.notify_one();
    }
}

/// A response body that keeps its request marked in progress until it is dropped.
pub struct Tracked<B> {
    inner: B,
    _request: RequestGuard,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, request: RequestGuard) -> Self {
        Tracked {
            inner,
            _request: request,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client socket whose reads and blocked writes are reported to its [`Activity`].
pub struct Watched<T> {
    inner: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.activity.read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> Watched<T> {
    fn note_write<R>(&self, polled: &Poll<io::Result<R>>) {
        self.activity.write_blocked(polled.is_pending());
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A body that sent nothing for `limit` while being read.
#[derive(Debug, thiserror::Error)]
#[error("the body sent nothing for {0:?}")]
pub struct BodyStalled(pub Duration);

/// Ends a body with [`BodyStalled`] when its source sends no frame for `limit` while it is
/// being read. Time its reader spends elsewhere (a slow consumer) does not count: the clock
/// starts when the reader asks for a frame that is not there.
pub struct StallTimeout<B> {
    inner: B,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    on_stall: Option<Box<dyn FnOnce() + Send>>,
}

impl<B> StallTimeout<B> {
    pub fn new(inner: B, limit: Duration, on_stall: impl FnOnce() + Send + 'static) -> Self {
        StallTimeout {
            inner,
            limit,
            sleep: None,
            armed: false,
            on_stall: Some(Box::new(on_stall)),
        }
    }
}

impl<B> Body for StallTimeout<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                if !this.armed {
                    let deadline = Instant::now() + this.limit;
                    match &mut this.sleep {
                        Some(sleep) => sleep.as_mut().reset(deadline),
                        None => this.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    this.armed = true;
                }
                let sleep = this.sleep.as_mut().expect("armed above");
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.armed = false;
                if let Some(on_stall) = this.on_stall.take() {
                    on_stall();
                }
                Poll::Ready(Some(Err(BodyStalled(this.limit).into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test]
    async fn a_body_that_stalls_ends_with_an_error_and_reports_it_once() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let stalls = Arc::new(AtomicU64::new(0));
        let counted = stalls.clone();
        let mut body = StallTimeout::new(
            StreamBody::new(Box::pin(stream)),
            Duration::from_millis(300),
            move || {
                counted.fetch_add(1, Ordering::Relaxed);
            },
        );
        // Frames 200 ms apart keep it going: the limit is between frames, not in total.
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await;
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(tx);
        });
        for _ in 0..3 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        let started = Instant::now();
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(error.is::<BodyStalled>(), "{error}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(stalls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_connection_that_never_sent_a_byte_is_counted_but_not_warned_about() {
        assert!(!CloseReason::HeaderTimeout.warned(true), "a preconnect");
        assert!(CloseReason::HeaderTimeout.warned(false), "a partial head");
        for reason in CloseReason::ALL {
            if reason != CloseReason::HeaderTimeout {
                assert!(reason.warned(true) && reason.warned(false), "{reason:?}");
            }
        }
    }

    #[test]
    fn a_burst_of_closures_is_one_log_line() {
        let lines = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || SharedWriter(sink.clone()))
            .with_ansi(false)
            .finish();
        let log = BurstLog {
            server: "proxy",
            counts: Default::default(),
            last: Mutex::new(None),
        };
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..300 {
                log.note(CloseReason::HeaderTimeout);
            }
        });
        let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("header_timeout=1"), "{text}");
        // The rest waits for the next line, at most 10 s later.
        assert_eq!(
            log.counts[CloseReason::HeaderTimeout as usize].load(Ordering::Relaxed),
            299
        );
    }

    struct SharedWriter(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for SharedWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn hyper_errors_that_are_not_limits_are_not_counted() {
        let io = std::io::Error::other("reset by peer");
        assert_eq!(CloseReason::of_error(&io), None);
    }
}
