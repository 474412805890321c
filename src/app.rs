//! Wiring: builds the pieces from the config and runs `proxy`, `join`, `console`, `run` and
//! `demo`.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admin;
use crate::config::{Config, KafkaConfig};
use crate::decision::Decider;
use crate::join;
use crate::kafka::{self, EmbeddedBroker, ReviewSink};
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy, ProxySettings};
use crate::review::ReviewPipeline;
use crate::route::RouteTable;
use crate::upstream::Upstream;

/// How long the startup topic check may wait for the broker.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

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
pub struct Shutdown {
    fired: watch::Receiver<bool>,
    fired_at: Arc<OnceLock<Instant>>,
}

impl Shutdown {
    /// A shutdown that fires when `trigger` resolves.
    pub fn on(trigger: impl Future<Output = ()> + Send + 'static) -> Shutdown {
        let (tx, fired) = watch::channel(false);
        let fired_at = Arc::new(OnceLock::new());
        let at = fired_at.clone();
        tokio::spawn(async move {
            trigger.await;
            let _ = at.set(Instant::now());
            let _ = tx.send(true);
        });
        Shutdown { fired, fired_at }
    }

    pub async fn wait(mut self) {
        let _ = self.fired.wait_for(|stopped| *stopped).await;
    }

    /// What is left of `grace` since the shutdown fired (all of it if it has not).
    pub fn remaining(&self, grace: Duration) -> Duration {
        self.fired_at
            .get()
            .map_or(grace, |at| grace.saturating_sub(at.elapsed()))
    }
}

/// Where Kafka is: the configured brokers, or an embedded broker kept alive by this value.
pub struct KafkaEndpoint {
    pub bootstrap: String,
    _embedded: Option<EmbeddedBroker>,
}

impl KafkaEndpoint {
    /// Starts the embedded broker when `brokers = "embedded"`; otherwise just names the brokers.
    /// The embedded broker gets every topic up front, the joiner's state topic included (the
    /// mock cluster cannot create topics through the admin API).
    pub fn connect(config: &Config) -> anyhow::Result<KafkaEndpoint> {
        let kafka_config = &config.kafka;
        if !kafka_config.is_embedded() {
            return Ok(KafkaEndpoint {
                bootstrap: kafka_config.brokers.clone(),
                _embedded: None,
            });
        }
        let state_topic = join::state_topic_name(&config.join.group_id);
        let mut topics = kafka::topic_names(kafka_config).to_vec();
        topics.push(&state_topic);
        let broker = EmbeddedBroker::start(&topics, kafka_config.topic_partitions)?;
        let bootstrap = broker.bootstrap_servers().to_owned();
        info!(
            %bootstrap,
            "embedded Kafka broker started (in-process, not persistent): point kcat or a client at it"
        );
        Ok(KafkaEndpoint {
            bootstrap,
            _embedded: Some(broker),
        })
    }
}

/// Checks (and creates, when configured) the topics in the background: an unreachable broker
/// is logged clearly but never stops inference traffic.
fn check_topics_in_background(config: &KafkaConfig, bootstrap: &str) {
    let (config, bootstrap) = (config.clone(), bootstrap.to_owned());
    tokio::spawn(async move {
        match kafka::ensure_topics(&config, &bootstrap, TOPIC_CHECK_TIMEOUT).await {
            Ok(report) if !report.created.is_empty() => {
                info!(created = ?report.created, "created missing Kafka topics")
            }
            Ok(_) => info!("Kafka topics present"),
            Err(e) => error!(
                error = %e,
                "Kafka topic check failed; inference is served, review records wait in the queue"
            ),
        }
    });
}

/// The proxy with its review pipeline (decision and Kafka sink), as every command runs it.
pub async fn build_proxy(
    config: &Config,
    bootstrap: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Arc<Proxy>, Arc<ReviewSink>)> {
    let upstream = Upstream::from_config(&config.upstream).await?;
    build_proxy_on(config, upstream, bootstrap, metrics)
}

/// [`build_proxy`] with an upstream the caller built (e.g. a SageMaker client whose
/// credentials do not come from the process environment).
pub fn build_proxy_on(
    config: &Config,
    upstream: Upstream,
    bootstrap: &str,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Arc<Proxy>, Arc<ReviewSink>)> {
    let decider = Decider::new(config)?;
    let sink = Arc::new(ReviewSink::new(&config.kafka, bootstrap, metrics.clone())?);
    let proxy = Proxy::new(
        ProxySettings::from_config(config),
        upstream,
        RouteTable::new(&config.routes),
        Arc::new(ReviewPipeline::new(decider, sink.clone(), metrics.clone())),
        metrics,
    );
    Ok((proxy, sink))
}

/// The data and admin listeners, bound before anything else starts so a port in use fails fast.
struct Listeners {
    data: TcpListener,
    admin: TcpListener,
}

impl Listeners {
    async fn bind(config: &Config) -> anyhow::Result<Listeners> {
        let data = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!("cannot listen on server.listen = {}", config.server.listen)
            })?;
        let admin = bind_admin(config).await?;
        Ok(Listeners { data, admin })
    }
}

async fn bind_admin(config: &Config) -> anyhow::Result<TcpListener> {
    TcpListener::bind(config.server.admin_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on server.admin_listen = {}",
                config.server.admin_listen
            )
        })
}

/// Serves the proxy until `shutdown`, then flushes the review records within what is left of
/// `shutdown_grace`.
async fn serve_proxy(
    config: &Config,
    bootstrap: &str,
    metrics: Arc<Metrics>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    check_topics_in_background(&config.kafka, bootstrap);
    let (proxy, sink) = build_proxy(config, bootstrap, metrics.clone()).await?;
    let ready_sink = sink.clone();
    let ready: admin::Readiness = Arc::new(move || ready_sink.is_ready());
    let admin = tokio::spawn(admin::serve(
        listeners.admin,
        metrics,
        ready,
        shutdown.clone().wait(),
    ));
    proxy::serve(listeners.data, proxy, shutdown.clone().wait()).await?;
    let purged = sink
        .flush(shutdown.remaining(config.server.shutdown_grace))
        .await;
    if purged > 0 {
        warn!(
            purged,
            "review records not delivered before the shutdown grace ran out"
        );
    }
    admin.await??;
    info!("proxy stopped");
    Ok(())
}

/// Runs the sidecar proxy and its admin server until `shutdown`.
pub async fn run_proxy(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::on(shutdown);
    let listeners = Listeners::bind(&config).await?;
    let kafka = KafkaEndpoint::connect(&config)?;
    let metrics = Arc::new(Metrics::new());
    serve_proxy(&config, &kafka.bootstrap, metrics, listeners, shutdown).await
}

/// Runs the review joiner, with an admin server for its metrics, until `shutdown`.
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
    let shutdown = Shutdown::on(shutdown);
    let metrics = Arc::new(Metrics::new());
    let admin_listener = bind_admin(&config).await?;
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        Arc::new(|| true),
        shutdown.clone().wait(),
    ));
    join::run(&config, &config.kafka.brokers, metrics, shutdown.wait()).await?;
    admin.await??;
    info!("joiner stopped");
    Ok(())
}

/// Runs the reviewer console, with an admin server for its metrics, until `shutdown`.
pub async fn run_console(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.kafka.is_embedded() {
        anyhow::bail!(
            "kafka.brokers = \"embedded\" lives inside one process: use `reviewloop demo \
             --serve`, or point `console` at a broker"
        );
    }
    let shutdown = Shutdown::on(shutdown);
    let metrics = Arc::new(Metrics::new());
    let listener = TcpListener::bind(config.console.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on console.listen = {}",
                config.console.listen
            )
        })?;
    let admin_listener = bind_admin(&config).await?;
    let admin = tokio::spawn(admin::serve(
        admin_listener,
        metrics.clone(),
        Arc::new(|| true),
        shutdown.clone().wait(),
    ));
    crate::console::run(
        &config,
        &config.kafka.brokers,
        metrics,
        listener,
        shutdown.wait(),
    )
    .await?;
    admin.await??;
    Ok(())
}

/// Runs the proxy and the joiner in one process: one admin server and metrics registry, and
/// with `brokers = "embedded"` one in-process broker for both. A joiner failure (e.g. topics
/// not co-partitioned) stops the process.
pub async fn run_all(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shutdown = Shutdown::on(shutdown);
    let listeners = Listeners::bind(&config).await?;
    let kafka = KafkaEndpoint::connect(&config)?;
    let metrics = Arc::new(Metrics::new());
    let joiner = async {
        join::run(
            &config,
            &kafka.bootstrap,
            metrics.clone(),
            shutdown.clone().wait(),
        )
        .await
        .map_err(anyhow::Error::from)
    };
    let proxy = serve_proxy(
        &config,
        &kafka.bootstrap,
        metrics.clone(),
        listeners,
        shutdown.clone(),
    );
    tokio::try_join!(proxy, joiner)?;
    Ok(())
}
