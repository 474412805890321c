//! Everything the demo runs: the production [`App`] (embedded broker, proxy, joiner, admin
//! server) and the simulated parties around it (the model server, its trainer, the
//! reviewers), from start to an orderly stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::model::{self, Model};
use super::options::{DemoOptions, demo_config};
use super::report::Audit;
use super::reviewers::{self, ReviewerSettings, ReviewerStats};
use super::task::Task;
use crate::app::{self, App, Roles, Shutdown};
use crate::config::Config;
use crate::metrics::{DeliveryOutcome, Metrics, SkipReason};
use crate::record::Reason;

/// The route label of the clients' path, `/invocations`.
const DEMO_ROUTE: &str = "/invocations";

/// The loop's counters, read from the shared metrics and the reviewers.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counts {
    /// Review records the broker acknowledged.
    pub delivered: u64,
    /// Review records that never reached Kafka.
    pub lost: u64,
    pub over_budget: u64,
    pub retraining: u64,
    pub dead_letters: u64,
    pub joiner_pending: i64,
    /// Reviews the reviewers could not read: never answered.
    pub unreadable: u64,
    /// Audited reviews the joiner compared with the model.
    pub audit: Audit,
}

impl Counts {
    /// Reviews that reached an end: a retraining record or a dead letter.
    pub fn resolved(&self) -> u64 {
        self.retraining + self.dead_letters
    }
}

/// Everything the demo started, until [`Running::stop`].
pub(super) struct Running {
    pub config: Config,
    pub bootstrap: String,
    pub model: SocketAddr,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The reviewer console, with `--serve`.
    pub console: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    learner: Arc<Model>,
    reviewers: Arc<ReviewerStats>,
    stop: Shutdown,
    app: app::Running,
    /// The simulated reviewers, unless people answer in the console (`--reviewers 0`).
    reviewer_pool: Option<JoinHandle<anyhow::Result<()>>>,
    trainer: JoinHandle<anyhow::Result<()>>,
    model_server: JoinHandle<()>,
}

/// What was left when the demo stopped.
pub(super) struct Stopped {
    pub counts: Counts,
    pub reviewers: Arc<ReviewerStats>,
}

impl Running {
    /// Starts the model server, then the production app on the embedded broker, then the
    /// trainer and the reviewers. Dropping the result (an early error) stops them all.
    pub async fn start(
        options: &DemoOptions,
        task: &Task,
        learner: Arc<Model>,
    ) -> anyhow::Result<Running> {
        let stop = Shutdown::new();
        let model_listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("cannot listen on 127.0.0.1")?;
        let model = model_listener.local_addr()?;
        let model_server = tokio::spawn(model::serve(model_listener, learner.clone(), stop.wait()));

        let config = demo_config(options, model);
        let checked = config
            .clone()
            .check()
            .context("the demo's configuration is invalid")?;
        let roles = Roles {
            console: options.serve,
            ..Roles::ALL
        };
        let app = App::build(checked, roles).await?.spawn(stop.clone());
        let bootstrap = app.bootstrap().to_owned();
        let metrics = app.metrics().clone();
        let proxy = app.proxy_address().context("the demo runs the proxy")?;
        let admin = app.admin_address().context("the admin server listens")?;
        let console = app.console_address();

        // The simulated parties around it.
        let trainer = {
            let (config, bootstrap, learner, stop) = (
                config.clone(),
                bootstrap.clone(),
                learner.clone(),
                stop.wait(),
            );
            tokio::spawn(async move { model::train(&config, &bootstrap, learner, stop).await })
        };
        let reviewers = Arc::new(ReviewerStats::default());
        let reviewer_pool = (options.reviewers > 0).then(|| {
            let settings = ReviewerSettings {
                count: options.reviewers,
                accuracy: options.reviewer_accuracy,
                delay: options.review_delay,
                answers_per_review: options.answers_per_review as usize,
                seed: options.seed,
            };
            let (config, bootstrap, stats, stop, task) = (
                config.clone(),
                bootstrap.clone(),
                reviewers.clone(),
                stop.wait(),
                task.clone(),
            );
            tokio::spawn(async move {
                reviewers::run(&config, &bootstrap, task, settings, stats, stop).await
            })
        });
        Ok(Running {
            config,
            bootstrap,
            model,
            proxy,
            admin,
            console,
            metrics,
            learner,
            reviewers,
            stop,
            app,
            reviewer_pool,
            trainer,
            model_server,
        })
    }

    pub fn counts(&self) -> Counts {
        read_counts(&self.metrics, &self.config, &self.reviewers)
    }

    /// The app, the reviewers and the trainer only end early when they fail.
    pub fn failed(&self) -> bool {
        let reviewers_ended = self
            .reviewer_pool
            .as_ref()
            .is_some_and(JoinHandle::is_finished);
        self.app.failed() || reviewers_ended || self.trainer.is_finished()
    }

    /// Waits until the `reviewed` reviews the clients saw reached Kafka, were answered and
    /// joined, and the model learned every retraining record; `false` after `timeout`.
    pub async fn drain(&self, reviewed: u64, timeout: Duration) -> bool {
        let started = Instant::now();
        loop {
            let counts = self.counts();
            let learner = &self.learner;
            if counts.delivered + counts.lost >= reviewed
                && counts.resolved() + counts.unreadable >= counts.delivered
                && learner.learned() + learner.rejected() >= counts.retraining
            {
                return true;
            }
            if self.failed() || started.elapsed() > timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops everything (the app flushes its review records) and reports the first failure.
    pub async fn stop(self) -> anyhow::Result<Stopped> {
        let Running {
            config,
            metrics,
            reviewers,
            stop,
            app,
            reviewer_pool,
            trainer,
            model_server,
            ..
        } = self;
        stop.fire();
        if let Some(reviewer_pool) = reviewer_pool {
            reviewer_pool
                .await
                .context("the reviewers panicked")?
                .context("the reviewers failed")?;
        }
        trainer
            .await
            .context("the trainer panicked")?
            .context("the trainer failed")?;
        // The app goes last: its embedded broker outlives every client.
        app.wait().await?;
        model_server.await.context("the model server panicked")?;
        let counts = read_counts(&metrics, &config, &reviewers);
        Ok(Stopped { counts, reviewers })
    }
}

fn read_counts(metrics: &Metrics, config: &Config, reviewers: &ReviewerStats) -> Counts {
    Counts {
        delivered: metrics.kafka_reports(&config.kafka.review_topic, DeliveryOutcome::Delivered),
        lost: metrics.reviews_skipped(SkipReason::QueueFull)
            + metrics.reviews_skipped(SkipReason::KafkaError),
        over_budget: metrics.reviews_skipped(SkipReason::OverBudget),
        retraining: metrics.retraining_records_total.get(),
        dead_letters: metrics.dead_letters(),
        joiner_pending: metrics.reviews_pending.get(),
        unreadable: reviewers.unreadable.load(Ordering::Relaxed),
        audit: read_audit(metrics),
    }
}

/// `reviewloop_model_agreement_total{reason="sampled"}` on the demo's route.
fn read_audit(metrics: &Metrics) -> Audit {
    let count = |agreed: &str| {
        metrics
            .model_agreement_total
            .with_label_values(&[DEMO_ROUTE, Reason::Sampled.as_str(), agreed])
            .get()
    };
    let agreed = count("true");
    Audit {
        agreed,
        compared: agreed + count("false"),
    }
}
