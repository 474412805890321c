//! The webhook endpoint: `POST /webhook` from Label Studio, checked against the shared
//! secret in constant time, answered at once (Label Studio waits 1 s, in the annotator's
//! request), its annotation handed to the bridge's answer worker. A call that cannot be
//! queued is still answered 200: the catch-up finds the annotation.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::answer::Annotation;
use super::config::Secret;
use super::metrics::{BridgeMetrics, Refused};
use crate::upstream::{Body, full_body};

/// The path Label Studio posts to.
pub const PATH: &str = "/webhook";
/// A webhook body is at most this large (an annotation and its task).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub struct Webhook {
    pub header: http::HeaderName,
    pub secret: Secret,
    pub events: mpsc::Sender<Annotation>,
    pub metrics: Arc<BridgeMetrics>,
}

/// Serves the webhook until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    webhook: Arc<Webhook>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    info!(address = %listener.local_addr()?, "Label Studio webhook listening");
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!(error = %e, "webhook accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let webhook = webhook.clone();
                let service = service_fn(move |request| {
                    let webhook = webhook.clone();
                    async move { Ok::<_, Infallible>(handle(&webhook, request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!(error = %e, "webhook connection ended");
                    }
                });
            }
            () = &mut shutdown => return Ok(()),
        }
    }
}

async fn handle(webhook: &Webhook, request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::POST || request.uri().path() != PATH {
        webhook.metrics.refused(Refused::NotFound);
        return answer(StatusCode::NOT_FOUND, "not found\n");
    }
    let given = request
        .headers()
        .get(&webhook.header)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(given.ct_eq(webhook.secret.expose().as_bytes())) {
        webhook.metrics.refused(Refused::Secret);
        return answer(StatusCode::UNAUTHORIZED, "wrong or missing shared secret\n");
    }
    let body = match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            webhook.metrics.refused(Refused::Invalid);
            return answer(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
        }
    };
    match event(&body) {
        Ok(Some(annotation)) => {
            if webhook.events.try_send(annotation).is_err() {
                debug!("webhook event not queued (the worker is busy); the catch-up finds it");
            }
            answer(StatusCode::OK, "ok\n")
        }
        Ok(None) => answer(StatusCode::OK, "ignored\n"),
        Err(detail) => {
            webhook.metrics.refused(Refused::Invalid);
            debug!(%detail, "unreadable webhook call");
            answer(StatusCode::BAD_REQUEST, "not an annotation event\n")
        }
    }
}

/// The annotation of an ANNOTATION_CREATED or ANNOTATION_UPDATED call; `None` for other
/// actions.
pub fn event(body: &Bytes) -> Result<Option<Annotation>, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let action = value
        .get("action")
        .and_then(Value::as_str)
        .ok_or("no action")?;
    if !matches!(action, "ANNOTATION_CREATED" | "ANNOTATION_UPDATED") {
        return Ok(None);
    }
    let annotation = value.get("annotation").ok_or("no annotation")?;
    Annotation::from_json(annotation)
        .map(Some)
        .map_err(|e| format!("{e:?}"))
}

fn answer(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full_body(text));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_events_are_read_and_others_ignored() {
        let created = Bytes::from_static(
            br#"{"action":"ANNOTATION_CREATED","annotation":{"id":3,"task":8,"completed_by":1,"result":[]},"task":{"id":8}}"#,
        );
        let annotation = event(&created).unwrap().unwrap();
        assert_eq!((annotation.id, annotation.task), (3, 8));
        let other = Bytes::from_static(br#"{"action":"TASKS_CREATED","tasks":[]}"#);
        assert_eq!(event(&other).unwrap(), None);
        assert!(event(&Bytes::from_static(b"nope")).is_err());
        let broken = Bytes::from_static(br#"{"action":"ANNOTATION_UPDATED","annotation":{"id":3}}"#);
        assert!(event(&broken).is_err());
    }
}
