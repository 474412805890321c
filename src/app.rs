//! Wiring: builds the pieces from the config and runs `proxy`, `join`, `run` and `demo`.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::admin;
use crate::config::Config;
use crate::exchange::{ExchangeHook, NoReview};
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy, ProxySettings};
use crate::route::RouteTable;
use crate::upstream::Upstream;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("SIGINT received: shutting down"),
        () = terminate => info!("SIGTERM received: shutting down"),
    }
}

/// One shutdown event observed by many tasks.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A shutdown that fires when `trigger` resolves.
    pub fn on(trigger: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            trigger.await;
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

/// Runs the sidecar proxy and its admin server until `shutdown`.
pub async fn run_proxy(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::on(shutdown);
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on server.listen = {}", config.server.listen))?;
    let admin_listener = TcpListener::bind(config.server.admin_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on server.admin_listen = {}",
                config.server.admin_listen
            )
        })?;
    let upstream = Upstream::from_config(&config.upstream).await?;
    let hook: Arc<dyn ExchangeHook> = Arc::new(NoReview);
    let proxy = Proxy::new(
        ProxySettings::from_config(&config),
        upstream,
        RouteTable::new(&config.routes),
        hook,
        metrics.clone(),
    );
    let ready: admin::Readiness = Arc::new(|| true);
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        ready,
        shutdown.clone().wait(),
    ));
    proxy::serve(listener, proxy, shutdown.wait()).await?;
    admin.await??;
    info!("proxy stopped");
    Ok(())
}
