//! Wiring: one [`App`] built from a checked configuration — listeners bound, Kafka reached (or
//! embedded), the components made — then spawned, and stopped in order within what is left of
//! the grace period. `proxy`, `join`, `console`, `label-studio`, `run` and `demo` all go
//! through it; a new process role is one more component here.
//!
//! Stopping: when the shutdown fires (a signal, the caller) or any component ends by itself
//! (a failure), every component is told to stop. The proxy stops accepting, finishes its
//! requests and flushes the review records within the grace; the joiner finishes its open
//! transaction; the admin server goes last. The first failure is what the run returns.

mod shutdown;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub use self::shutdown::{Shutdown, shutdown_signal};
use crate::admin::{self, Readiness};
use crate::config::{Checked, Config};
use crate::kafka::{self, EmbeddedBroker, KafkaConfig, ReviewSink};
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy, ProxyListener, ProxySettings, RuntimeModel};
use crate::review::ReviewPipeline;
use crate::upstream::Upstream;
use crate::{console, join, label_studio};

/// How long the startup topic check may wait for the broker.
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// What a process runs besides its admin server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// The sidecar: the proxy, its review pipeline and Kafka sink.
    pub proxy: bool,
    /// The review joiner.
    pub join: bool,
    /// The reviewer console.
    pub console: bool,
    /// The Label Studio bridge; in `run` only when `label_studio.url` is set.
    pub label_studio: bool,
}

impl Roles {
    /// `reviewloop proxy`.
    pub const PROXY: Roles = Roles {
        proxy: true,
        join: false,
        console: false,
        label_studio: false,
    };
    /// `reviewloop join`.
    pub const JOIN: Roles = Roles {
        proxy: false,
        join: true,
        console: false,
        label_studio: false,
    };
    /// `reviewloop console`.
    pub const CONSOLE: Roles = Roles {
        proxy: false,
        join: false,
        console: true,
        label_studio: false,
    };
    /// `reviewloop label-studio`.
    pub const LABEL_STUDIO: Roles = Roles {
        proxy: false,
        join: false,
        console: false,
        label_studio: true,
    };
    /// `reviewloop run`: everything in one process (the bridge when it is configured).
    pub const ALL: Roles = Roles {
        proxy: true,
        join: true,
        console: true,
        label_studio: true,
    };
}

/// The process's main runtime for `roles`: everything but the thread-per-core proxy's serving
/// threads runs on it. With those threads serving the data plane, a proxy-only process keeps
/// one worker here (the admin server, the Kafka sink's housekeeping); the multi-thread proxy
/// runs on `server.threads` workers (0: one per core).
pub fn main_runtime(config: &Config, roles: Roles) -> std::io::Result<tokio::runtime::Runtime> {
    let server = &config.server;
    let workers = match server.runtime {
        RuntimeModel::ThreadPerCore if roles == Roles::PROXY => 1,
        RuntimeModel::ThreadPerCore => std::thread::available_parallelism().map_or(1, usize::from),
        RuntimeModel::MultiThread => server.serving_threads(),
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}

/// Where Kafka is: the configured brokers, or an embedded broker kept alive by this value.
struct KafkaEndpoint {
    bootstrap: String,
    _embedded: Option<EmbeddedBroker>,
}

impl KafkaEndpoint {
    /// Starts the embedded broker when `brokers = "embedded"`; otherwise just names the brokers.
    /// The embedded broker gets every topic up front, the joiner's state topic included (the
    /// mock cluster cannot create topics through the admin API).
    fn connect(config: &Config) -> anyhow::Result<KafkaEndpoint> {
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

/// The proxy and what it needs to run: its listener and its Kafka sink.
struct ProxyPart {
    listener: ProxyListener,
    proxy: Arc<Proxy>,
    sink: Arc<ReviewSink>,
}

/// A process's components, built and bound, not yet running.
pub struct App {
    config: Arc<Config>,
    kafka: KafkaEndpoint,
    metrics: Arc<Metrics>,
    admin: TcpListener,
    proxy: Option<ProxyPart>,
    join: bool,
    console: Option<TcpListener>,
    label_studio: Option<TcpListener>,
}

impl App {
    /// Builds `roles` from `checked`: binds the listeners (so a port in use fails fast),
    /// reaches or embeds Kafka, and makes the upstream client.
    pub async fn build(checked: Checked, roles: Roles) -> anyhow::Result<App> {
        let upstream = if roles.proxy {
            Some(Upstream::from_config(&checked.config.upstream).await?)
        } else {
            None
        };
        App::assemble(checked, roles, upstream).await
    }

    /// [`App::build`] with an upstream the caller built (e.g. a SageMaker client whose
    /// credentials do not come from the process environment).
    pub async fn build_on(
        checked: Checked,
        roles: Roles,
        upstream: Upstream,
    ) -> anyhow::Result<App> {
        App::assemble(checked, roles, Some(upstream)).await
    }

    async fn assemble(
        checked: Checked,
        roles: Roles,
        upstream: Option<Upstream>,
    ) -> anyhow::Result<App> {
        let Checked { config, routes } = checked;
        if !roles.proxy && config.kafka.is_embedded() {
            anyhow::bail!(
                "kafka.brokers = \"embedded\" lives inside one process: use `reviewloop run` or \
                 `reviewloop demo --serve`, or point this command at a broker"
            );
        }
        let data = if upstream.is_some() {
            let address = config.server.listen;
            Some(
                ProxyListener::bind(&config.server)
                    .with_context(|| format!("cannot listen on server.listen = {address}"))?,
            )
        } else {
            None
        };
        let console = if roles.console {
            Some(bind(config.console.listen, "console.listen").await?)
        } else {
            None
        };
        // `run` (the roles with the proxy) includes the bridge when it is configured;
        // `label-studio` needs it to be.
        let label_studio = if roles.label_studio
            && (config.label_studio.is_configured() || !roles.proxy)
        {
            if !config.label_studio.is_configured() {
                anyhow::bail!(
                    "label_studio.url is not set: `reviewloop label-studio` needs a Label Studio"
                );
            }
            Some(bind(config.label_studio.listen, "label_studio.listen").await?)
        } else {
            None
        };
        let admin = bind(config.server.admin_listen, "server.admin_listen").await?;
        let kafka = KafkaEndpoint::connect(&config)?;
        let metrics = Arc::new(Metrics::new());
        let proxy = match (data, upstream) {
            (Some(listener), Some(upstream)) => {
                let sink = Arc::new(ReviewSink::new(
                    &config.kafka,
                    &kafka.bootstrap,
                    metrics.clone(),
                )?);
                let pipeline = ReviewPipeline::new(sink.clone(), metrics.clone(), &routes);
                let proxy = Proxy::new(
                    ProxySettings::new(&config.server, config.upstream.timeout),
                    upstream,
                    routes,
                    Arc::new(pipeline),
                    metrics.clone(),
                );
                Some(ProxyPart {
                    listener,
                    proxy,
                    sink,
                })
            }
            _ => None,
        };
        Ok(App {
            config: Arc::new(config),
            kafka,
            metrics,
            admin,
            proxy,
            join: roles.join,
            console,
            label_studio,
        })
    }

    /// Starts every component; they stop when `shutdown` fires or one of them fails.
    pub fn spawn(self, shutdown: Shutdown) -> Running {
        let App {
            config,
            kafka,
            metrics,
            admin,
            proxy,
            join,
            console,
            label_studio,
        } = self;
        let admin_address = admin.local_addr().ok();
        let console_address = console.as_ref().and_then(|l| l.local_addr().ok());
        let mut proxy_address = None;
        let mut sink = None;
        let mut ready: Readiness = Arc::new(|| true);
        let proxy_task = proxy.map(|part| {
            proxy_address = Some(part.listener.local_addr());
            sink = Some(part.sink.clone());
            if config.server.ready_requires_kafka {
                let sink = part.sink.clone();
                ready = Arc::new(move || sink.is_kafka_up());
            }
            check_topics_in_background(&config.kafka, &kafka.bootstrap);
            tokio::spawn(serve_proxy(
                part,
                config.server.shutdown_grace,
                shutdown.clone(),
            ))
        });
        let join_task = join.then(|| {
            let (config, bootstrap, metrics, stop) = (
                config.clone(),
                kafka.bootstrap.clone(),
                metrics.clone(),
                shutdown.wait(),
            );
            tokio::spawn(async move {
                join::run(&config.join, &config.kafka, &bootstrap, metrics, stop).await?;
                info!("joiner stopped");
                Ok(())
            })
        });
        let console_task = console.map(|listener| {
            let (config, bootstrap, metrics, stop) = (
                config.clone(),
                kafka.bootstrap.clone(),
                metrics.clone(),
                shutdown.wait(),
            );
            tokio::spawn(async move {
                let sections = console::Sections {
                    console: &config.console,
                    join: &config.join,
                    kafka: &config.kafka,
                    shutdown_grace: config.server.shutdown_grace,
                };
                console::run(sections, &bootstrap, metrics, listener, stop).await?;
                Ok(())
            })
        });
        let label_studio_address = label_studio.as_ref().and_then(|l| l.local_addr().ok());
        let label_studio_task = label_studio.map(|listener| {
            // The process is ready once the bridge reached Label Studio, and while it can.
            let bridge_ready = Arc::new(AtomicBool::new(false));
            let before = ready.clone();
            let flag = bridge_ready.clone();
            ready = Arc::new(move || before() && flag.load(Ordering::Acquire));
            let (config, bootstrap, metrics, stop) = (
                config.clone(),
                kafka.bootstrap.clone(),
                metrics.clone(),
                shutdown.wait(),
            );
            tokio::spawn(async move {
                let sections = label_studio::Sections {
                    label_studio: &config.label_studio,
                    console: &config.console,
                    kafka: &config.kafka,
                    review_timeout: config.join.review_timeout,
                    reviewers_per_item: config.join.reviewers_per_item,
                };
                label_studio::run(sections, &bootstrap, metrics, listener, bridge_ready, stop)
                    .await?;
                Ok(())
            })
        });
        let admin_task = tokio::spawn(admin::serve(admin, metrics.clone(), ready, shutdown.wait()));
        Running {
            shutdown,
            proxy: proxy_task,
            join: join_task,
            console: console_task,
            label_studio: label_studio_task,
            admin: admin_task,
            label_studio_address,
            proxy_address,
            admin_address,
            console_address,
            sink,
            metrics,
            kafka,
        }
    }

    /// Runs until `shutdown` resolves or a component fails, then stops everything.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.spawn(Shutdown::on(shutdown)).wait().await
    }
}

/// A running [`App`].
pub struct Running {
    shutdown: Shutdown,
    proxy: Option<JoinHandle<anyhow::Result<()>>>,
    join: Option<JoinHandle<anyhow::Result<()>>>,
    console: Option<JoinHandle<anyhow::Result<()>>>,
    label_studio: Option<JoinHandle<anyhow::Result<()>>>,
    admin: JoinHandle<std::io::Result<()>>,
    label_studio_address: Option<SocketAddr>,
    proxy_address: Option<SocketAddr>,
    admin_address: Option<SocketAddr>,
    console_address: Option<SocketAddr>,
    sink: Option<Arc<ReviewSink>>,
    metrics: Arc<Metrics>,
    /// Keeps an embedded broker alive until everything has stopped.
    kafka: KafkaEndpoint,
}

impl Running {
    /// The proxy's data address, when this process runs the proxy.
    pub fn proxy_address(&self) -> Option<SocketAddr> {
        self.proxy_address
    }

    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin_address
    }

    /// The console's address, when this process runs the console.
    pub fn console_address(&self) -> Option<SocketAddr> {
        self.console_address
    }

    /// The bridge's webhook address, when this process runs the Label Studio bridge.
    pub fn label_studio_address(&self) -> Option<SocketAddr> {
        self.label_studio_address
    }

    pub fn bootstrap(&self) -> &str {
        &self.kafka.bootstrap
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The review sink, when this process runs the proxy.
    pub fn sink(&self) -> Option<&Arc<ReviewSink>> {
        self.sink.as_ref()
    }

    /// Whether a component has ended by itself (it failed; [`Running::wait`] says how).
    pub fn failed(&self) -> bool {
        let ended = |task: &Option<JoinHandle<anyhow::Result<()>>>| {
            task.as_ref().is_some_and(JoinHandle::is_finished)
        };
        !self.shutdown.is_fired()
            && (ended(&self.proxy)
                || ended(&self.join)
                || ended(&self.console)
                || ended(&self.label_studio))
    }

    /// Waits for the shutdown or for the first component to end by itself, then stops every
    /// component in order and returns the first failure.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let early = tokio::select! {
            () = self.shutdown.wait() => None,
            result = ended(&mut self.proxy) => Some(result.context("the proxy failed")),
            result = ended(&mut self.join) => Some(result.context("the joiner failed")),
            result = ended(&mut self.console) => Some(result.context("the console failed")),
            result = ended(&mut self.label_studio) => Some(result.context("the Label Studio bridge failed")),
        };
        if let Some(Err(e)) = &early {
            error!(
                error = format!("{e:#}"),
                "a component failed: stopping the others"
            );
        }
        self.shutdown.fire();
        let mut first_error = early.and_then(Result::err);
        for (task, what) in [
            (self.proxy, "the proxy"),
            (self.join, "the joiner"),
            (self.console, "the console"),
            (self.label_studio, "the Label Studio bridge"),
        ] {
            if let Some(task) = task {
                let result = joined(task.await).with_context(|| format!("{what} failed"));
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Err(e) = self
            .admin
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.context("the admin server failed"))
        {
            first_error.get_or_insert(e);
        }
        // The last clients are gone: now the embedded broker may stop.
        drop(self.sink);
        drop(self.kafka);
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The result of `task` once it ends, clearing it; pending forever when there is none.
async fn ended(task: &mut Option<JoinHandle<anyhow::Result<()>>>) -> anyhow::Result<()> {
    let Some(handle) = task.as_mut() else {
        return std::future::pending().await;
    };
    let result = joined(handle.await);
    *task = None;
    result
}

fn joined(result: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    result.map_err(|e| anyhow::anyhow!("panicked: {e}"))?
}

async fn bind(address: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {key} = {address}"))
}

/// Serves the proxy until `shutdown`, then flushes the review records within what is left of
/// the grace.
async fn serve_proxy(part: ProxyPart, grace: Duration, shutdown: Shutdown) -> anyhow::Result<()> {
    let ProxyPart {
        listener,
        proxy,
        sink,
    } = part;
    proxy::serve_on(listener, proxy, shutdown.wait()).await?;
    let purged = sink.flush(shutdown.remaining(grace)).await;
    if purged > 0 {
        warn!(
            purged,
            "review records not delivered before the shutdown grace ran out"
        );
    }
    info!("proxy stopped");
    Ok(())
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
