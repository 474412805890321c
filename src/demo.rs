//! `reviewloop demo`: the whole loop in one process, with a model that learns from it.
//!
//! The demo runs the same code as a deployment — an [`App`](crate::app::App) with the embedded
//! broker, the proxy, the joiner and the admin server — around three simulated parties:
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
mod options;
pub mod report;
pub mod reviewers;
mod running;
pub mod task;
pub mod traffic;

use std::future::Future;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::config::Config;
use crate::kafka::client_config;

use self::model::{Evaluation, Model};
use self::options::CONFIDENCE_BELOW;
pub use self::options::{DemoOptions, OptionsError, demo_config};
use self::report::{Audit, Summary, Window};
use self::running::Running;
use self::task::Task;
use self::traffic::Tally;

/// Labelled tickets the model is trained on before the demo starts: enough to beat chance,
/// too few to be sure of anything.
pub const PILOT_TICKETS: usize = 20;

/// Tickets the model is scored on before and after the run (never seen in training).
const HELD_OUT_TICKETS: usize = 2000;

/// How long the end of a run waits for the reviews in flight to be answered and joined.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The same after the user interrupted the run: they want it to end.
const INTERRUPTED_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on each metadata request while setting up the demo's consumers.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

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
    let mut audited = Audit::default();
    let mut window = |elapsed: Duration| {
        let seen = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        reviewed += seen.reviewed;
        let counts = running.counts();
        let audit = counts.audit.since(audited);
        audited = counts.audit;
        Window {
            elapsed,
            tally: seen,
            retraining: counts.retraining,
            pending: reviewed.saturating_sub(counts.resolved()),
            learned: model.learned(),
            audit,
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
        reviews_lost: counts.lost,
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
        audit: counts.audit,
    };
    write!(out, "{}", report::summary(&summary, elapsed))?;
    out.flush()?;
    Ok(summary)
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
        console,
        ..
    } = running;
    let kafka = &config.kafka;
    let length = if options.serve {
        "until Ctrl-C".to_owned()
    } else {
        format!("for {}", humantime::format_duration(options.duration))
    };
    let reviewers = if options.reviewers == 0 {
        "you review in the console".to_owned()
    } else {
        format!(
            "{} simulated reviewers, {:.0}% accurate, ~{} a review",
            options.reviewers,
            options.reviewer_accuracy * 100.0,
            humantime::format_duration(options.review_delay),
        )
    };
    writeln!(
        out,
        "reviewloop demo: seed {}, {} requests/s {length}; {reviewers}",
        options.seed, options.rps,
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
        "  proxy    http://{proxy}/invocations  ({}, sample {}%)",
        if config.review.target_rate > 0.0 {
            format!(
                "review the least confident {}%",
                config.review.target_rate * 100.0
            )
        } else {
            format!("review below confidence {}", config.review.confidence_below)
        },
        config.review.sample_percent
    )?;
    writeln!(out, "  metrics  http://{admin}/metrics")?;
    if let Some(console) = console {
        writeln!(
            out,
            "  console  http://{console}/  (reviewers sign in with any name: loopback only)"
        )?;
    }
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
