//! Wiring: builds the pieces from the config and runs `proxy`, `join`, `run` and `demo`.

use std::future::Future;
use std::sync::Arc;

use tracing::info;

use crate::config::Config;
use crate::join;
use crate::metrics::Metrics;

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

/// Runs the review joiner until `shutdown`.
pub async fn run_join(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.kafka.is_embedded() {
        anyhow::bail!(
            "kafka.brokers = \"embedded\" lives inside one process: use `reviewloop run` or \
             `reviewloop demo`, or point `join` at a broker"
        );
    }
    let metrics = Arc::new(Metrics::new());
    join::run(&config, &config.kafka.brokers, metrics, shutdown).await?;
    Ok(())
}
