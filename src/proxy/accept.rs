//! The accept loop every HTTP server of the process shares (the proxy, the console, the admin
//! endpoints): connections admitted under [`Connections`]' cap and deadlines, each served
//! by hyper with the given handler; on shutdown, stop accepting and let open requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::limits::{Connections, Tracked};
use crate::upstream::Body;

/// Serves `listener` with `handler` until `shutdown` resolves, then stops accepting (new
/// connections are refused) and waits for open requests, at most `grace`; with no grace it
/// returns at once and open connections end with the runtime. `server` names the server in
/// logs.
pub async fn serve_connections<H, F>(
    listener: TcpListener,
    connections: &Arc<Connections>,
    server: &'static str,
    handler: H,
    grace: Option<Duration>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(server, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some((io, admitted)) = connections.admit(stream, peer) else { continue };
                let activity = admitted.activity();
                let handler = handler.clone();
                let service = service_fn(move |request| {
                    let started = activity.request_started();
                    let response = handler(request);
                    async move {
                        Ok::<_, Infallible>(response.await.map(|body| Tracked::new(body, started)))
                    }
                });
                let connection = connections.builder().serve_connection(io, service).into_owned();
                tokio::spawn(admitted.drive(graceful.watch(connection)));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let Some(grace) = grace else { return Ok(()) };
    info!(server, "stopped accepting; finishing in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(server, grace = ?grace, "shutdown grace elapsed with requests still in flight");
    }
    Ok(())
}
