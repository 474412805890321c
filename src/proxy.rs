//! The data plane: accepts clients (HTTP/1.1 and h2c), forwards to the upstream, streams the
//! response back unchanged while capturing it for the review hook, and maps failures to answers.
//!
//! A connection is admitted under `max_connections` and watched by [`limits`] (head, idle and
//! send deadlines, HTTP/2 limits); a request on it goes through these phases:
//! 1. admission: over `max_in_flight` ⇒ 503; the record id and route are chosen;
//! 2. forward: hop-by-hop headers dropped, `X-Request-Id` set, the body streamed to the upstream
//!    while a copy (up to `max_inspect_bytes`) is kept;
//! 3. response: a non-2xx answer passes through untouched. A 2xx body with a known length up to
//!    the cap is read whole, handed to the hook, and sent with `x-reviewloop-review` when
//!    diverted. Any other body (server-sent events, chunked, larger) streams frame by frame; at
//!    its end the copy goes to the hook, which can no longer change the response.

mod accept;
mod config;
mod decode;
pub mod headers;
mod limits;
mod serving;
mod tap;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, info, warn};

pub use self::accept::serve_connections;
pub use self::config::{RuntimeModel, ServerConfig};
pub use self::decode::{DecodeError, decode};
pub use self::limits::Connections;
pub use self::serving::{ProxyListener, serve_on};
use self::limits::StallTimeout;
use self::headers::{
    X_INVOKED_VARIANT, X_REQUEST_ID, X_REVIEWLOOP_ID, X_REVIEWLOOP_REVIEW,
    X_SAGEMAKER_TARGET_MODEL, id_value, record_id, remove_hop_by_hop, text, traceparent,
};
use self::tap::{Copy, TapBody};
use crate::decision::Force;
use crate::exchange::{Captured, Exchange, ExchangeHook};
use crate::metrics::{Metrics, RouteSeries, SkipReason};
use crate::record::ModelInfo;
use crate::route::{Route, RouteTable};
use crate::upstream::{Body, BoxError, Upstream, UpstreamError, full_body};

/// The proxy's knobs, taken from `[server]` and `[upstream]`.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub max_inspect_bytes: usize,
    pub max_in_flight: usize,
    pub upstream_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The connection and body limits of `[server]`.
    pub server: ServerConfig,
}

impl ProxySettings {
    pub fn new(server: &ServerConfig, upstream_timeout: Duration) -> ProxySettings {
        ProxySettings {
            max_inspect_bytes: server.max_inspect_bytes,
            max_in_flight: server.max_in_flight,
            upstream_timeout,
            shutdown_grace: server.shutdown_grace,
            server: server.clone(),
        }
    }
}

/// `error_type` of a request shed above `max_in_flight`.
const OVERLOADED: &str = "overloaded";
/// `error_type` of a request whose body stalled for `body_read_timeout` (408).
const CLIENT_BODY_TIMEOUT: &str = "client_body_timeout";
/// `error_type` of a response body cut because the upstream sent nothing for
/// `upstream.timeout` (the head was already sent: the client sees the body end early).
const UPSTREAM_BODY_TIMEOUT: &str = "upstream_body_timeout";

/// The proxy's own failures, classified once into a status and a bounded `error_type`.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("too many requests in flight")]
    Overloaded,
    #[error("the request body stalled")]
    ClientBodyTimeout,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        match self {
            ProxyError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Upstream(e) => e.status(),
        }
    }

    fn error_type(&self) -> &'static str {
        match self {
            ProxyError::Overloaded => OVERLOADED,
            ProxyError::ClientBodyTimeout => CLIENT_BODY_TIMEOUT,
            ProxyError::Upstream(e) => e.error_type(),
        }
    }

    fn client_message(&self) -> String {
        match self {
            ProxyError::Overloaded => "the proxy is at its max_in_flight limit; retry later".into(),
            ProxyError::ClientBodyTimeout => {
                "the request body sent nothing for server.body_read_timeout".into()
            }
            ProxyError::Upstream(e) => e.client_message(),
        }
    }
}

pub struct Proxy {
    settings: ProxySettings,
    upstream: Upstream,
    routes: Arc<RouteTable>,
    hook: Arc<dyn ExchangeHook>,
    metrics: Arc<Metrics>,
    /// Per route, in [`RouteTable::routes`] order: its series, resolved once.
    series: Arc<[RouteSeries]>,
    in_flight: Arc<Semaphore>,
    connections: Arc<Connections>,
    /// Where the review of a streamed response runs once its body has ended: the runtime the
    /// proxy was made on, which outlives the serving threads' runtimes until the records are
    /// flushed.
    background: Option<tokio::runtime::Handle>,
}

/// Set when a request's body stalled for `body_read_timeout`; carried in the request's
/// extensions from [`Proxy::handle`] to the answer.
#[derive(Clone)]
struct ClientBodyStalled(Arc<AtomicBool>);

/// Holds a request's place under `max_in_flight` and in the in-flight gauge.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.metrics.requests_in_flight.dec();
    }
}

/// Everything known about an exchange before its response body has been read.
struct Pending {
    id: String,
    route: Route,
    received_at: SystemTime,
    request_copy: Arc<Mutex<Option<Copy>>>,
    request_content_type: Option<String>,
    request_content_encoding: Option<String>,
    status: u16,
    response_content_type: Option<String>,
    response_content_encoding: Option<String>,
    force: Option<Force>,
    traceparent: Option<String>,
    model: ModelInfo,
    cap: usize,
}

impl Pending {
    /// Builds the exchange from the response copy, or `None` when it cannot be inspected.
    fn complete(self, response: Copy, metrics: &Metrics) -> Option<Exchange> {
        if response.overflowed {
            metrics.review_skipped(SkipReason::TooLarge);
            return None;
        }
        let response_body = match decode(
            self.response_content_encoding.as_deref(),
            &response.bytes,
            self.cap,
        ) {
            Ok(decoded) => decoded,
            Err(DecodeError::TooLarge) => {
                metrics.review_skipped(SkipReason::TooLarge);
                return None;
            }
            // Undecodable: inspect the bytes as they are (the decision finds no confidence).
            Err(e) => {
                debug!(id = %self.id, error = %e, "response body not decoded for inspection");
                response.bytes
            }
        };
        let request = match self.request_copy.lock().expect("not poisoned").take() {
            Some(copy) if !copy.overflowed => {
                let encoding = self.request_content_encoding.as_deref();
                match decode(encoding, &copy.bytes, self.cap) {
                    Ok(body) => Captured {
                        content_type: self.request_content_type,
                        body,
                        truncated: false,
                    },
                    Err(_) => Captured {
                        content_type: self.request_content_type,
                        body: copy.bytes,
                        truncated: false,
                    },
                }
            }
            // Larger than the cap, or still streaming when the response ended.
            _ => Captured {
                content_type: self.request_content_type,
                body: Bytes::new(),
                truncated: true,
            },
        };
        Some(Exchange {
            id: self.id,
            route: self.route,
            received_at: self.received_at,
            request,
            status: self.status,
            response: Captured {
                content_type: self.response_content_type,
                body: response_body,
                truncated: false,
            },
            force: self.force,
            traceparent: self.traceparent,
            model: self.model,
        })
    }
}

impl Proxy {
    pub fn new(
        settings: ProxySettings,
        upstream: Upstream,
        routes: Arc<RouteTable>,
        hook: Arc<dyn ExchangeHook>,
        metrics: Arc<Metrics>,
    ) -> Arc<Proxy> {
        let in_flight = Arc::new(Semaphore::new(settings.max_in_flight));
        // The error answers every proxy can give exist at 0 from the start, for alerts.
        for error_type in [OVERLOADED, CLIENT_BODY_TIMEOUT, UPSTREAM_BODY_TIMEOUT]
            .into_iter()
            .chain(crate::upstream::ERROR_TYPES)
        {
            metrics.proxy_errors_total.with_label_values(&[error_type]);
        }
        let connections = Connections::new(&settings.server, "proxy", Some(metrics.clone()));
        let series = routes
            .routes()
            .map(|route| RouteSeries::new(&metrics, route.label()))
            .collect();
        Arc::new(Proxy {
            settings,
            upstream,
            routes,
            hook,
            metrics,
            series,
            in_flight,
            connections,
            background: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// The same proxy for another serving thread: its own upstream connections, everything
    /// else (limits, metrics, the review pipeline) shared.
    pub fn for_thread(&self) -> Arc<Proxy> {
        Arc::new(Proxy {
            settings: self.settings.clone(),
            upstream: self.upstream.for_thread(),
            routes: self.routes.clone(),
            hook: self.hook.clone(),
            metrics: self.metrics.clone(),
            series: self.series.clone(),
            in_flight: self.in_flight.clone(),
            connections: self.connections.clone(),
            background: self.background.clone(),
        })
    }

    /// Answers one request; every failure becomes a response, nothing here returns an error.
    pub async fn handle(self: Arc<Self>, request: Request<Incoming>) -> Response<Body> {
        let stalled = ClientBodyStalled(Arc::new(AtomicBool::new(false)));
        let flag = stalled.0.clone();
        let limit = self.settings.server.body_read_timeout;
        let mut request = request.map(|body| {
            let body = body.map_err(|e| -> BoxError { Box::new(e) });
            StallTimeout::new(body, limit, move || flag.store(true, Ordering::Relaxed))
                .boxed_unsync()
        });
        request.extensions_mut().insert(stalled);
        self.handle_body(request).await
    }

    // No span per request: creating one formats its fields (JSON logs) and entering it takes
    // the filter's lock on every poll. The few events on this path carry `id` and `route`.
    async fn handle_body(self: Arc<Self>, request: Request<Body>) -> Response<Body> {
        let id = record_id(request.headers());
        let route = self.routes.resolve(request.uri().path()).clone();
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            return self.error_response(&id, &route, ProxyError::Overloaded);
        };
        self.metrics.requests_in_flight.inc();
        let guard = InFlight {
            _permit: permit,
            metrics: self.metrics.clone(),
        };
        self.forward(request, id, route, guard).await
    }

    async fn forward(
        self: &Arc<Self>,
        request: Request<Body>,
        id: String,
        route: Route,
        guard: InFlight,
    ) -> Response<Body> {
        let received_at = SystemTime::now();
        let (mut parts, body) = request.into_parts();
        let client_body_stalled = parts.extensions.remove::<ClientBodyStalled>();
        let http1 = parts.version < http::Version::HTTP_2;
        let force = parts
            .headers
            .remove(route.policy().force_header())
            .and_then(|v| Force::parse(v.as_bytes()));
        let traceparent = traceparent(&parts.headers);
        remove_hop_by_hop(&mut parts.headers);
        if !parts.headers.contains_key(X_REQUEST_ID) {
            parts.headers.insert(X_REQUEST_ID, id_value(&id));
        }
        let request_copy = Arc::new(Mutex::new(None));
        let slot = request_copy.clone();
        let body = TapBody::capture(body, self.settings.max_inspect_bytes, move |copy| {
            *slot.lock().expect("not poisoned") = Some(copy);
        });
        let pending_request = (
            text(&parts.headers, CONTENT_TYPE),
            text(&parts.headers, CONTENT_ENCODING),
            text(&parts.headers, X_SAGEMAKER_TARGET_MODEL),
        );
        let upstream_request = Request::from_parts(parts, body.boxed_unsync());

        let started = Instant::now();
        let deadline = started + self.settings.upstream_timeout;
        let result =
            match tokio::time::timeout_at(deadline.into(), self.upstream.call(upstream_request))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(UpstreamError::Timeout),
            };
        let response = match result {
            Ok(response) => response,
            Err(_) if client_body_stalled.is_some_and(|s| s.0.load(Ordering::Relaxed)) => {
                debug!(%id, route = route.label(), "request body stalled");
                let mut response = self.error_response(&id, &route, ProxyError::ClientBodyTimeout);
                if http1 {
                    // The rest of the body may still come: the connection cannot be reused.
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                return response;
            }
            Err(e) => {
                warn!(%id, route = route.label(), error = %e, "upstream call failed");
                return self.error_response(&id, &route, e.into());
            }
        };
        self.series(&route, |series| {
            series.upstream_duration(started.elapsed().as_secs_f64());
        });

        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        parts.headers.insert(X_REVIEWLOOP_ID, id_value(&id));
        // A body streamed through (not read whole below) may not stall for longer than the
        // upstream may take to answer: a model server that stops mid-body does not pin the
        // client's and the upstream's connections for ever.
        let metrics = self.metrics.clone();
        let stall_limit = self.settings.upstream_timeout;
        let body = StallTimeout::new(body, stall_limit, move || {
            warn!(limit = ?stall_limit, "upstream body stalled; cutting the response");
            metrics
                .proxy_errors_total
                .with_label_values(&[UPSTREAM_BODY_TIMEOUT])
                .inc();
        })
        .boxed_unsync();
        let status = parts.status;
        if !status.is_success() {
            self.count(&route, status);
            return Response::from_parts(
                parts,
                TapBody::passthrough(body).with_guard(guard).boxed_unsync(),
            );
        }

        let (request_content_type, request_content_encoding, target_model) = pending_request;
        let pending = Pending {
            id: id.clone(),
            route: route.clone(),
            received_at,
            request_copy,
            request_content_type,
            request_content_encoding,
            status: status.as_u16(),
            response_content_type: text(&parts.headers, CONTENT_TYPE),
            response_content_encoding: text(&parts.headers, CONTENT_ENCODING),
            force,
            traceparent,
            model: ModelInfo {
                target_model,
                variant: text(&parts.headers, X_INVOKED_VARIANT),
            },
            cap: self.settings.max_inspect_bytes,
        };
        let cap = self.settings.max_inspect_bytes as u64;
        match inspection(&parts.headers, cap) {
            Inspection::Buffered => {
                let body = match tokio::time::timeout_at(deadline.into(), body.collect()).await {
                    Ok(Ok(collected)) => collected.to_bytes(),
                    Ok(Err(e)) => {
                        let e = UpstreamError::Failed(e);
                        warn!(%id, route = route.label(), error = %e, "upstream body failed");
                        return self.error_response(&id, &route, e.into());
                    }
                    Err(_) => {
                        return self.error_response(&id, &route, UpstreamError::Timeout.into());
                    }
                };
                let copy = Copy {
                    bytes: body.clone(),
                    overflowed: false,
                };
                if let Some(exchange) = pending.complete(copy, &self.metrics) {
                    let verdict = self.hook.on_exchange(exchange).await;
                    if verdict.diverted()
                        && let Ok(value) = verdict.header_value().parse()
                    {
                        parts.headers.insert(X_REVIEWLOOP_REVIEW, value);
                    }
                }
                self.count(&route, status);
                drop(guard);
                Response::from_parts(parts, full_body(body))
            }
            Inspection::Streamed => {
                let proxy = self.clone();
                let tapped = TapBody::capture(body, self.settings.max_inspect_bytes, move |copy| {
                    if let Some(exchange) = pending.complete(copy, &proxy.metrics) {
                        let handled = proxy.hook.on_exchange(exchange).in_current_span();
                        match &proxy.background {
                            Some(runtime) => drop(runtime.spawn(handled)),
                            None => drop(tokio::spawn(handled)),
                        }
                    }
                });
                self.count(&route, status);
                Response::from_parts(parts, tapped.with_guard(guard).boxed_unsync())
            }
            Inspection::TooLarge => {
                self.metrics.review_skipped(SkipReason::TooLarge);
                self.count(&route, status);
                Response::from_parts(
                    parts,
                    TapBody::passthrough(body).with_guard(guard).boxed_unsync(),
                )
            }
        }
    }

    fn count(&self, route: &Route, status: StatusCode) {
        self.series(route, |series| series.request(status.as_u16()));
    }

    /// Runs `count` on `route`'s series (always this proxy's table: it resolved the route).
    fn series(&self, route: &Route, count: impl FnOnce(&RouteSeries)) {
        match self.series.get(route.index()) {
            Some(series) if series.label() == route.label() => count(series),
            _ => count(&RouteSeries::new(&self.metrics, route.label())),
        }
    }

    fn error_response(&self, id: &str, route: &Route, error: ProxyError) -> Response<Body> {
        let status = error.status();
        self.count(route, status);
        self.metrics
            .proxy_errors_total
            .with_label_values(&[error.error_type()])
            .inc();
        let mut body = serde_json::json!({
            "error": error.error_type(),
            "message": error.client_message(),
            "id": id,
        });
        if let ProxyError::Upstream(e) = &error
            && let Some(original) = e.original_status()
        {
            body["original_status"] = original.into();
        }
        let mut response = Response::new(full_body(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(X_REVIEWLOOP_ID, id_value(id));
        response
    }
}

enum Inspection {
    /// Known length within the cap: read whole so the decision can ride on a header.
    Buffered,
    /// Unknown length or an event stream: pass frames on, inspect at the end.
    Streamed,
    /// Known to exceed the cap: pass through without copying.
    TooLarge,
}

fn inspection(headers: &HeaderMap, cap: u64) -> Inspection {
    let event_stream = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("text/event-stream")
        });
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) if length > cap => Inspection::TooLarge,
        Some(_) if !event_stream => Inspection::Buffered,
        _ => Inspection::Streamed,
    }
}

/// Serves `proxy` on `listener` until `shutdown` resolves, then stops accepting (new
/// connections are refused), lets in-flight requests finish, and returns — at the latest
/// after `shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    info!(address = %listener.local_addr()?, "proxy listening");
    serve_quietly(listener, proxy, shutdown).await
}

/// [`serve`] without the log line (a serving thread of many).
async fn serve_quietly(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let grace = proxy.settings.shutdown_grace;
    let connections = proxy.connections.clone();
    let handler = move |request| {
        let proxy = proxy.clone();
        async move { proxy.handle(request).await }
    };
    serve_connections(listener, &connections, "proxy", handler, Some(grace), shutdown).await
}
