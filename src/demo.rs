//! `reviewloop demo`: the whole loop in one process, with a model that learns from it.
//!
//! The demo runs the same code as a deployment — the embedded broker, the proxy built by
//! [`app::build_proxy`], the joiner ([`join::run`]), the admin server — around three simulated
//! parties:
//!
//! - a model server on loopback ([`model`]): a softmax regression over word n-grams that
//!   routes support tickets to a team ([`task`]), answers Hugging-Face-shaped
//!   `[{"label","score"}]`, starts from a handful of labelled tickets (weak and unsure), and
//!   learns from every record of the retraining topic;
//! - reviewers ([`reviewers`]) who read the review topic and publish answers to the completed
//!   topic, with a configurable count, accuracy and delay;
//! - clients ([`traffic`]) sending tickets through the proxy over HTTP at a steady rate.
//!
//! Every few seconds a row shows what the clients saw (requests, review rate, low-confidence
//! share, accuracy) and the loop's counters (retraining records, pending reviews). When the
//! time is up the traffic stops, the reviews still in flight are answered and joined, and a
//! summary compares the first window with the last.

pub mod learner;
pub mod model;
pub mod report;
pub mod reviewers;
pub mod task;
pub mod traffic;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::app::{self, KafkaEndpoint, Shutdown};
use crate::config::Config;
use crate::kafka::{ReviewSink, client_config};
use crate::metrics::Metrics;
use crate::{admin, join, proxy};

use self::model::{Evaluation, Model};
use self::report::{Summary, Window};
use self::reviewers::{ReviewerSettings, ReviewerStats};
use self::task::Task;
use self::traffic::Tally;

/// Labelled tickets the model is trained on before the demo starts: enough to beat chance,
/// too few to be sure of anything.
pub const PILOT_TICKETS: usize = 20;

/// Tickets the model is scored on before and after the run (never seen in training).
const HELD_OUT_TICKETS: usize = 2000;
/// `review.confidence_below` of the demo (reviewloop's default).
const CONFIDENCE_BELOW: f64 = 0.7;

/// How long the end of a run waits for the reviews in flight to be answered and joined.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The same after the user interrupted the run: they want it to end.
const INTERRUPTED_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each metadata request while setting up the demo's consumers.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// What `reviewloop demo` runs: the command's flags, with the same defaults as
/// [`DemoOptions::default`].
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct DemoOptions {
    /// How long the traffic runs (ignored with --serve).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Requests a second sent through the proxy.
    #[arg(long, default_value_t = 200)]
    pub rps: u32,
    /// Seeds the task's hidden rule, the tickets and the reviewers' mistakes.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Keep running (traffic included) until Ctrl-C, for watching the topics and metrics.
    #[arg(long)]
    pub serve: bool,
    /// One table row per this period.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Simulated reviewers.
    #[arg(long, default_value_t = 16)]
    pub reviewers: usize,
    /// Probability that a reviewer gives the true label (0..1).
    #[arg(long, default_value_t = 0.95)]
    pub reviewer_accuracy: f64,
    /// A reviewer's mean time per review.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    pub review_delay: Duration,
    /// Answers needed per review (join.reviewers_per_item), each from another reviewer.
    #[arg(long, default_value_t = 1)]
    pub answers_per_review: u32,
    /// Reviews a second at most (review.budget_per_second); 0 = unlimited.
    #[arg(long = "budget", default_value_t = 0.0)]
    pub budget_per_second: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            duration: Duration::from_secs(60),
            rps: 200,
            seed: 42,
            serve: false,
            interval: Duration::from_secs(5),
            // 16 reviewers at ~50 ms each answer ~320 reviews a second: they keep up with the
            // first seconds, when nearly every answer is unsure (real reviewers take minutes;
            // the demo runs the loop fast-forward).
            reviewers: 16,
            reviewer_accuracy: 0.95,
            review_delay: Duration::from_millis(50),
            answers_per_review: 1,
            budget_per_second: 0.0,
        }
    }
}

impl DemoOptions {
    /// Every problem with the options, each naming its flag.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.rps == 0 {
            problems.push("--rps must be at least 1".to_owned());
        }
        if self.duration.is_zero() {
            problems.push("--duration must be more than 0s".to_owned());
        }
        if self.interval.is_zero() {
            problems.push("--interval must be more than 0s".to_owned());
        }
        if self.reviewers == 0 {
            problems.push("--reviewers must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&self.reviewer_accuracy) {
            problems.push(format!(
                "--reviewer-accuracy = {}: must be between 0 and 1",
                self.reviewer_accuracy
            ));
        }
        if self.answers_per_review == 0 || self.answers_per_review as usize > self.reviewers {
            problems.push(format!(
                "--answers-per-review = {}: must be between 1 and --reviewers ({})",
                self.answers_per_review, self.reviewers
            ));
        }
        if !(self.budget_per_second >= 0.0 && self.budget_per_second.is_finite()) {
            problems.push(format!(
                "--budget = {}: must be 0 (unlimited) or more",
                self.budget_per_second
            ));
        }
        problems
    }
}

/// Invalid [`DemoOptions`].
#[derive(Debug, thiserror::Error)]
#[error("bad demo options:\n  - {}", .0.join("\n  - "))]
pub struct OptionsError(pub Vec<String>);

/// The configuration the demo runs the production code with.
pub fn demo_config(options: &DemoOptions, model: SocketAddr) -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.shutdown_grace = Duration::from_secs(5);
    config.upstream.url = format!("http://{model}");
    config.upstream.timeout = Duration::from_secs(10);
    config.kafka.brokers = crate::config::EMBEDDED_BROKERS.into();
    config.join.reviewers_per_item = options.answers_per_review;
    config.review.budget_per_second = options.budget_per_second;
    config.review.confidence_below = CONFIDENCE_BELOW;
    config
}

/// Runs the demo, writing the table and summary to `out`, until the time is up (or, with
/// `serve`, until `shutdown`; `shutdown` also ends a timed run early).
pub async fn run(
    options: DemoOptions,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<Summary> {
    let problems = options.validate();
    if !problems.is_empty() {
        return Err(OptionsError(problems).into());
    }
    // The model: weak at first, then taught by the retraining topic.
    let task = Task::new(options.seed);
    let model = Arc::new(Model::pilot(&mut task.fork(1), PILOT_TICKETS));
    let held_out = || task.fork(3);
    let before = model::evaluate(&model, &mut held_out(), HELD_OUT_TICKETS, CONFIDENCE_BELOW);

    let running = Running::start(&options, &task, model.clone()).await?;
    write_banner(out, &options, &running, before)?;

    // Traffic, and a row per window.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (traffic_stop, traffic_stopped) = oneshot::channel::<()>();
    let traffic = tokio::spawn(traffic::run(
        running.proxy,
        task.fork(2),
        options.rps,
        CONFIDENCE_BELOW,
        tally.clone(),
        async {
            let _ = traffic_stopped.await;
        },
    ));
    let started = Instant::now();
    let end = (!options.serve).then(|| started + options.duration);
    let mut reviewed = 0;
    let mut window = |elapsed: Duration| {
        let seen = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        reviewed += seen.reviewed;
        let counts = running.counts();
        Window {
            elapsed,
            tally: seen,
            retraining: counts.retraining,
            pending: reviewed.saturating_sub(counts.resolved()),
            learned: model.learned(),
        }
    };
    let mut windows = Vec::new();
    writeln!(out, "\n{}", report::header())?;
    tokio::pin!(shutdown);
    let mut next = started + options.interval;
    let mut interrupted = false;
    loop {
        let deadline = end.map_or(next, |end| next.min(end));
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {}
            () = &mut shutdown => {
                interrupted = true;
                break;
            }
        }
        if end == Some(deadline) || running.failed() {
            break;
        }
        let row = window(deadline - started);
        writeln!(out, "{}", report::row(&row))?;
        out.flush()?;
        windows.push(row);
        next += options.interval;
    }
    let _ = traffic_stop.send(());
    traffic.await.context("the traffic generator panicked")?;
    let last = window(started.elapsed());
    if last.tally.requests > 0 {
        writeln!(out, "{}", report::row(&last))?;
        windows.push(last);
    }
    let elapsed = started.elapsed();

    // Let the reviews in flight be answered, joined and learned, then stop everything.
    let drain_timeout = if interrupted {
        INTERRUPTED_DRAIN_TIMEOUT
    } else {
        DRAIN_TIMEOUT
    };
    let drained = running.drain(reviewed, drain_timeout).await;
    let stopped = running.stop().await?;

    let mut total = Tally::default();
    for window in &windows {
        total.add(&window.tally);
    }
    let counts = stopped.counts;
    let summary = Summary {
        windows,
        total,
        reviews_delivered: counts.delivered,
        reviews_lost: counts.lost + stopped.purged as u64,
        over_budget: counts.over_budget,
        answers: stopped.reviewers.answers.load(Ordering::Relaxed),
        wrong_answers: stopped.reviewers.wrong_answers.load(Ordering::Relaxed),
        unreadable: counts.unreadable,
        retraining: counts.retraining,
        dead_letters: counts.dead_letters,
        pending: counts.delivered.saturating_sub(counts.resolved()),
        joiner_pending: counts.joiner_pending,
        learned: model.learned(),
        drained,
        pilot: PILOT_TICKETS,
        before,
        after: model::evaluate(&model, &mut held_out(), HELD_OUT_TICKETS, CONFIDENCE_BELOW),
    };
    write!(out, "{}", report::summary(&summary, elapsed))?;
    out.flush()?;
    Ok(summary)
}

/// The loop's counters, read from the shared metrics and the reviewers.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// Review records the broker acknowledged.
    delivered: u64,
    /// Review records that never reached Kafka.
    lost: u64,
    over_budget: u64,
    retraining: u64,
    dead_letters: u64,
    joiner_pending: i64,
    /// Reviews the reviewers could not read: never answered.
    unreadable: u64,
}

impl Counts {
    /// Reviews that reached an end: a retraining record or a dead letter.
    fn resolved(&self) -> u64 {
        self.retraining + self.dead_letters
    }
}

/// Everything the demo started, until [`Running::stop`].
struct Running {
    config: Config,
    bootstrap: String,
    model: SocketAddr,
    proxy: SocketAddr,
    admin: SocketAddr,
    metrics: Arc<Metrics>,
    learner: Arc<Model>,
    sink: Arc<ReviewSink>,
    reviewers: Arc<ReviewerStats>,
    stop: oneshot::Sender<()>,
    joiner: JoinHandle<Result<(), join::JoinError>>,
    reviewer_pool: JoinHandle<anyhow::Result<()>>,
    trainer: JoinHandle<anyhow::Result<()>>,
    proxy_server: JoinHandle<std::io::Result<()>>,
    admin_server: JoinHandle<std::io::Result<()>>,
    model_server: JoinHandle<()>,
    /// Keeps the embedded broker alive.
    _kafka: KafkaEndpoint,
}

/// What was left when the demo stopped.
struct Stopped {
    counts: Counts,
    /// Review records still queued when the sink's flush ran out of time.
    purged: usize,
    reviewers: Arc<ReviewerStats>,
}

impl Running {
    /// Starts the model server, the broker, the proxy, the admin server, the joiner, the
    /// trainer and the reviewers. Dropping the result (an early error) stops them all.
    async fn start(
        options: &DemoOptions,
        task: &Task,
        learner: Arc<Model>,
    ) -> anyhow::Result<Running> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let stop = Shutdown::on(async {
            let _ = stop_rx.await;
        });
        let model_listener = bind().await?;
        let model = model_listener.local_addr()?;
        let model_server = tokio::spawn(model::serve(
            model_listener,
            learner.clone(),
            stop.clone().wait(),
        ));

        let config = demo_config(options, model);
        let problems = config.validate();
        if !problems.is_empty() {
            anyhow::bail!(
                "the demo's configuration is invalid: {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        let kafka = KafkaEndpoint::connect(&config)?;
        let bootstrap = kafka.bootstrap.clone();
        let metrics = Arc::new(Metrics::new());

        // The production pieces: proxy, admin server, joiner.
        let (proxy, sink) = app::build_proxy(&config, &bootstrap, metrics.clone()).await?;
        let proxy_listener = bind().await?;
        let proxy_addr = proxy_listener.local_addr()?;
        let proxy_server = tokio::spawn(proxy::serve(proxy_listener, proxy, stop.clone().wait()));
        let admin_listener = bind().await?;
        let admin = admin_listener.local_addr()?;
        let ready_sink = sink.clone();
        let admin_server = tokio::spawn(admin::serve(
            admin_listener,
            metrics.clone(),
            Arc::new(move || ready_sink.is_ready()),
            stop.clone().wait(),
        ));
        let joiner = {
            let (config, bootstrap, metrics, stop) = (
                config.clone(),
                bootstrap.clone(),
                metrics.clone(),
                stop.clone(),
            );
            tokio::spawn(async move { join::run(&config, &bootstrap, metrics, stop.wait()).await })
        };

        // The simulated parties around them.
        let trainer = {
            let (config, bootstrap, learner, stop) = (
                config.clone(),
                bootstrap.clone(),
                learner.clone(),
                stop.clone(),
            );
            tokio::spawn(
                async move { model::train(&config, &bootstrap, learner, stop.wait()).await },
            )
        };
        let reviewers = Arc::new(ReviewerStats::default());
        let reviewer_pool = {
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
                stop.clone(),
                task.clone(),
            );
            tokio::spawn(async move {
                reviewers::run(&config, &bootstrap, task, settings, stats, stop.wait()).await
            })
        };
        Ok(Running {
            config,
            bootstrap,
            model,
            proxy: proxy_addr,
            admin,
            metrics,
            learner,
            sink,
            reviewers,
            stop: stop_tx,
            joiner,
            reviewer_pool,
            trainer,
            proxy_server,
            admin_server,
            model_server,
            _kafka: kafka,
        })
    }

    fn counts(&self) -> Counts {
        read_counts(&self.metrics, &self.config, &self.reviewers)
    }

    /// The joiner, the reviewers and the trainer only end early when they fail.
    fn failed(&self) -> bool {
        self.joiner.is_finished() || self.reviewer_pool.is_finished() || self.trainer.is_finished()
    }

    /// Waits until the `reviewed` reviews the clients saw reached Kafka, were answered and
    /// joined, and the model learned every retraining record; `false` after `timeout`.
    async fn drain(&self, reviewed: u64, timeout: Duration) -> bool {
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

    /// Stops everything, flushes the review sink, and reports the first failure.
    async fn stop(self) -> anyhow::Result<Stopped> {
        let Running {
            config,
            metrics,
            sink,
            reviewers,
            stop,
            joiner,
            reviewer_pool,
            trainer,
            proxy_server,
            admin_server,
            model_server,
            _kafka: kafka,
            ..
        } = self;
        let _ = stop.send(());
        let purged = sink.flush(config.server.shutdown_grace).await;
        joiner
            .await
            .context("the joiner panicked")?
            .context("the joiner failed")?;
        reviewer_pool
            .await
            .context("the reviewers panicked")?
            .context("the reviewers failed")?;
        trainer
            .await
            .context("the trainer panicked")?
            .context("the trainer failed")?;
        proxy_server.await.context("the proxy panicked")??;
        admin_server.await.context("the admin server panicked")??;
        model_server.await.context("the model server panicked")?;
        let counts = read_counts(&metrics, &config, &reviewers);
        // The last client, then the broker: a producer outliving it would log it as down.
        drop(sink);
        drop(kafka);
        Ok(Stopped {
            counts,
            purged,
            reviewers,
        })
    }
}

fn read_counts(metrics: &Metrics, config: &Config, reviewers: &ReviewerStats) -> Counts {
    let skipped = |reason: &str| {
        metrics
            .reviews_skipped_total
            .with_label_values(&[reason])
            .get()
    };
    Counts {
        delivered: metrics
            .kafka_messages_total
            .with_label_values(&[config.kafka.review_topic.as_str(), "delivered"])
            .get(),
        lost: skipped("queue_full") + skipped("kafka_error"),
        over_budget: skipped("over_budget"),
        retraining: metrics.retraining_records_total.get(),
        dead_letters: ["invalid", "orphan", "expired", "no_agreement"]
            .iter()
            .map(|reason| {
                metrics
                    .dead_letters_total
                    .with_label_values(&[reason])
                    .get()
            })
            .sum(),
        joiner_pending: metrics.reviews_pending.get(),
        unreadable: reviewers.unreadable.load(Ordering::Relaxed),
    }
}

async fn bind() -> anyhow::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot listen on 127.0.0.1")
}

fn write_banner(
    out: &mut (dyn Write + Send),
    options: &DemoOptions,
    running: &Running,
    before: Evaluation,
) -> std::io::Result<()> {
    let Running {
        config,
        bootstrap,
        model,
        proxy,
        admin,
        ..
    } = running;
    let kafka = &config.kafka;
    let length = if options.serve {
        "until Ctrl-C".to_owned()
    } else {
        format!("for {}", humantime::format_duration(options.duration))
    };
    writeln!(
        out,
        "reviewloop demo: seed {}, {} requests/s {length}; {} simulated reviewers, {:.0}% accurate, ~{} a review",
        options.seed,
        options.rps,
        options.reviewers,
        options.reviewer_accuracy * 100.0,
        humantime::format_duration(options.review_delay),
    )?;
    writeln!(
        out,
        "  model    http://{model}  (a ticket router trained on {PILOT_TICKETS} tickets: \
         {:.1}% accurate, unsure of {:.1}%)",
        before.accuracy * 100.0,
        before.unsure * 100.0
    )?;
    writeln!(
        out,
        "  proxy    http://{proxy}/invocations  (review below confidence {}, sample {}%)",
        config.review.confidence_below, config.review.sample_percent
    )?;
    writeln!(out, "  metrics  http://{admin}/metrics")?;
    writeln!(
        out,
        "  kafka    {bootstrap} (embedded)  {} → {} → {}, {}",
        kafka.review_topic, kafka.completed_topic, kafka.retraining_topic, kafka.dead_letter_topic
    )?;
    if options.serve {
        writeln!(out, "\nRunning until Ctrl-C. Try:")?;
        writeln!(
            out,
            "  curl -si http://{proxy}/invocations -H 'content-type: application/json' \\\n       -d '{{\"inputs\": \"the app charged me twice\"}}'"
        )?;
        writeln!(
            out,
            "  kcat -b {bootstrap} -C -q -o end -t {}",
            kafka.review_topic
        )?;
        writeln!(
            out,
            "  kcat -b {bootstrap} -C -q -o beginning -X isolation.level=read_committed -t {}",
            kafka.retraining_topic
        )?;
        writeln!(out, "  curl -s http://{admin}/metrics | grep ^reviewloop_")?;
    }
    Ok(())
}

/// A consumer of every partition of `topic` from the beginning, without a consumer group
/// (nothing to wait for: the demo's readers start at once and read everything).
pub(crate) async fn assigned_consumer(
    config: &Config,
    bootstrap: &str,
    client_id: &str,
    topic: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<StreamConsumer> {
    let mut options = vec![
        ("client.id", client_id),
        // librdkafka wants a group id for assign(); this one never joins or commits.
        ("group.id", client_id),
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("fetch.wait.max.ms", "50"),
    ];
    options.extend_from_slice(extra);
    let consumer: StreamConsumer = client_config(&config.kafka, bootstrap, &options).create()?;
    let name = topic.to_owned();
    let (consumer, metadata) = tokio::task::spawn_blocking(move || {
        let metadata = consumer.fetch_metadata(Some(&name), METADATA_TIMEOUT);
        (consumer, metadata)
    })
    .await?;
    let metadata = metadata.with_context(|| format!("cannot read the metadata of {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions())
    {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
    }
    if assignment.count() == 0 {
        anyhow::bail!("topic {topic} has no partitions");
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_options_are_all_named() {
        assert!(DemoOptions::default().validate().is_empty());
        let bad = DemoOptions {
            rps: 0,
            reviewers: 2,
            answers_per_review: 3,
            reviewer_accuracy: 1.5,
            budget_per_second: -1.0,
            ..DemoOptions::default()
        };
        let problems = bad.validate();
        assert_eq!(problems.len(), 4, "{problems:?}");
        for flag in [
            "--rps",
            "--answers-per-review",
            "--reviewer-accuracy",
            "--budget",
        ] {
            assert!(problems.iter().any(|p| p.contains(flag)), "{flag}");
        }
    }

    #[test]
    fn the_flags_default_to_the_defaults() {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            options: DemoOptions,
        }
        let parsed = <Command as clap::Parser>::try_parse_from(["demo"]).unwrap();
        assert_eq!(parsed.options, DemoOptions::default());
        let parsed =
            <Command as clap::Parser>::try_parse_from(["demo", "--duration", "2m", "--serve"])
                .unwrap();
        assert_eq!(parsed.options.duration, Duration::from_secs(120));
        assert!(parsed.options.serve);
    }

    #[test]
    fn the_demo_config_is_valid_and_embedded() {
        let config = demo_config(
            &DemoOptions::default(),
            SocketAddr::from(([127, 0, 0, 1], 1)),
        );
        assert!(config.validate().is_empty(), "{:?}", config.validate());
        assert!(config.kafka.is_embedded());
        assert_eq!(config.upstream.url, "http://127.0.0.1:1");
    }
}
