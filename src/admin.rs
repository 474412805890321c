//! The admin server: `/metrics`, `/healthz`, `/readyz`, never on the data port.

use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::proxy::{Connections, ServerConfig, serve_connections};
use crate::upstream::{Body, full_body};

/// Whether the process is ready for traffic (listening, and Kafka metadata fetched).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Readiness,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    info!(address = %listener.local_addr()?, "admin listening");
    // The proxy's connection deadlines and cap at their defaults: a scraper never needs more.
    let connections = Connections::new(&ServerConfig::default(), "admin", None);
    let handler = move |request: Request<Incoming>| {
        std::future::ready(answer(&request, &metrics, &ready))
    };
    serve_connections(listener, &connections, "admin", handler, None, shutdown).await
}

fn answer(request: &Request<Incoming>, metrics: &Metrics, ready: &Readiness) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(full_body(metrics.render()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => plain(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if ready() {
                plain(StatusCode::OK, "ready\n")
            } else {
                warn!("readiness probe: not ready");
                plain(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz\n",
        ),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full_body(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
