//! Simulated reviewers: a pool that reads the review topic and publishes answers to the
//! completed topic in reviewloop's documented format, as a labelling tool would.
//!
//! Each review goes to `answers_per_review` distinct reviewers, round-robin. A reviewer works
//! through its queue one item at a time, taking about `delay` per item, and answers the true
//! team (the task's hidden rule, read from the request text) with probability `accuracy`, else
//! another team at random. Queues are bounded: when reviewers fall behind, reading the review
//! topic waits (backpressure), and the backlog stays in Kafka.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use rdkafka::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::warn;

use super::task::{CLASSES, LABELS, Task};
use crate::config::Config;
use crate::kafka::{CE_REVIEW_COMPLETED, client_config, cloudevent_headers};
use crate::record::{Answer, CompletedRecord, Encoding, ReviewRecord, rfc3339_millis};

/// Items waiting per reviewer before the pool stops reading the review topic.
const QUEUE_PER_REVIEWER: usize = 256;

/// How the simulated reviewers behave.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewerSettings {
    pub count: usize,
    /// Probability of answering the true label (0..1).
    pub accuracy: f64,
    /// Mean time per item; each takes between half and one and a half of it.
    pub delay: Duration,
    /// Distinct reviewers per review (`join.reviewers_per_item`).
    pub answers_per_review: usize,
    pub seed: u64,
}

/// What the pool did, for the summary.
#[derive(Debug, Default)]
pub struct ReviewerStats {
    pub reviews_read: AtomicU64,
    pub answers: AtomicU64,
    /// Answers that were not the true label.
    pub wrong_answers: AtomicU64,
    /// Reviews without a ticket the reviewers could read (not answered).
    pub unreadable: AtomicU64,
    pub failed_sends: AtomicU64,
}

/// One item in a reviewer's queue.
struct Job {
    id: String,
    truth: usize,
}

/// The truth for a review record: the task's rule applied to the request's text; `None` when
/// the request is not a ticket (a request a user sent by hand, say).
pub fn truth_of(task: &Task, record: &ReviewRecord) -> Option<usize> {
    if record.request.encoding != Encoding::Json {
        return None;
    }
    task.truth(record.request.body.get("inputs")?.as_str()?)
}

/// The label a reviewer gives: the truth with probability `accuracy`, else another label.
pub fn answer_label(rng: &mut Xoshiro256PlusPlus, truth: usize, accuracy: f64) -> usize {
    if rng.random_bool(accuracy.clamp(0.0, 1.0)) {
        truth
    } else {
        (truth + rng.random_range(1..CLASSES)) % CLASSES
    }
}

/// Runs the pool until `shutdown`: one reader of the review topic, one task per reviewer.
pub async fn run(
    config: &Config,
    bootstrap: &str,
    task: Task,
    settings: ReviewerSettings,
    stats: Arc<ReviewerStats>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let consumer = super::assigned_consumer(
        config,
        bootstrap,
        "reviewloop-demo-reviewers",
        &config.kafka.review_topic,
        &[],
    )
    .await?;
    let producer: FutureProducer = client_config(
        &config.kafka,
        bootstrap,
        &[
            ("client.id", "reviewloop-demo-reviewer"),
            ("linger.ms", "5"),
        ],
    )
    .create()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut queues = Vec::with_capacity(settings.count);
    let mut workers = JoinSet::new();
    for number in 0..settings.count {
        let (tx, rx) = mpsc::channel(QUEUE_PER_REVIEWER);
        queues.push(tx);
        let worker = Reviewer {
            name: format!("reviewer-{:02}", number + 1),
            rng: Xoshiro256PlusPlus::seed_from_u64(
                settings.seed ^ (0xa11ce ^ number as u64).rotate_left(17),
            ),
            accuracy: settings.accuracy,
            delay: settings.delay,
            topic: config.kafka.completed_topic.clone(),
            producer: producer.clone(),
            stats: stats.clone(),
        };
        workers.spawn(worker.work(rx, stop_rx.clone()));
    }
    let mut next = 0usize;
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            received = consumer.recv() => received,
            () = &mut shutdown => break,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                warn!(error = %e, "review topic read failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        stats.reviews_read.fetch_add(1, Ordering::Relaxed);
        let record = message
            .payload()
            .and_then(|bytes| serde_json::from_slice::<ReviewRecord>(bytes).ok());
        let Some((record, truth)) = record.and_then(|r| truth_of(&task, &r).map(|t| (r, t))) else {
            stats.unreadable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        for k in 0..settings.answers_per_review {
            let queue = &queues[(next + k) % queues.len()];
            let job = Job {
                id: record.id.clone(),
                truth,
            };
            tokio::select! {
                sent = queue.send(job) => if sent.is_err() { break },
                () = &mut shutdown => return stop(stop_tx, workers).await,
            }
        }
        next = (next + settings.answers_per_review) % queues.len();
    }
    stop(stop_tx, workers).await
}

async fn stop(stop: watch::Sender<bool>, mut workers: JoinSet<()>) -> anyhow::Result<()> {
    let _ = stop.send(true);
    while workers.join_next().await.is_some() {}
    Ok(())
}

struct Reviewer {
    name: String,
    rng: Xoshiro256PlusPlus,
    accuracy: f64,
    delay: Duration,
    topic: String,
    producer: FutureProducer,
    stats: Arc<ReviewerStats>,
}

impl Reviewer {
    async fn work(mut self, mut jobs: mpsc::Receiver<Job>, mut stop: watch::Receiver<bool>) {
        loop {
            let job = tokio::select! {
                job = jobs.recv() => match job { Some(job) => job, None => return },
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let started = Instant::now();
            let think = self.delay.mul_f64(self.rng.random_range(0.5..1.5));
            tokio::select! {
                () = tokio::time::sleep(think) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let label = answer_label(&mut self.rng, job.truth, self.accuracy);
            if label != job.truth {
                self.stats.wrong_answers.fetch_add(1, Ordering::Relaxed);
            }
            self.publish(&job.id, label, started.elapsed()).await;
        }
    }

    async fn publish(&self, id: &str, label: usize, spent: Duration) {
        let now = rfc3339_millis(SystemTime::now());
        let record = CompletedRecord {
            id: id.to_owned(),
            answer: Answer {
                reviewer: self.name.clone(),
                answer: serde_json::json!({"label": LABELS[label]}),
                submitted_at: Some(now.clone()),
                time_spent_seconds: Some(spent.as_secs_f64()),
            },
        };
        let payload = serde_json::to_vec(&record).expect("a completed record serializes");
        let headers = cloudevent_headers(CE_REVIEW_COMPLETED, id, &now);
        let sent = self
            .producer
            .send(
                FutureRecord::to(&self.topic)
                    .key(id)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(5),
            )
            .await;
        match sent {
            Ok(_) => {
                self.stats.answers.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.stats.failed_sends.fetch_add(1, Ordering::Relaxed);
                warn!(%id, error = %e, "answer not delivered to the completed topic");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Payload, Reason, ResponsePayload};
    use proptest::prelude::*;

    fn review(body: &[u8]) -> ReviewRecord {
        ReviewRecord {
            id: "r1".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            route: "/invocations".into(),
            request: Payload::from_bytes(Some("application/json"), body),
            response: ResponsePayload {
                status: 200,
                payload: Payload::from_bytes(Some("application/json"), b"[]"),
            },
            confidence: Some(0.3),
            reasons: vec![Reason::LowConfidence],
            sample_percent: 1.0,
            conditions: vec![],
            model: Default::default(),
            truncated: false,
            traceparent: None,
            redaction: None,
        }
    }

    #[test]
    fn reviewers_read_the_ticket_from_the_review_record() {
        let task = Task::new(3);
        let record = review(br#"{"inputs": "Hi, my package has not arrived yet. Thanks"}"#);
        assert_eq!(truth_of(&task, &record), Some(1));
        assert_eq!(truth_of(&task, &review(br#"{"inputs": "hello"}"#)), None);
        assert_eq!(truth_of(&task, &review(b"not json")), None);
    }

    #[test]
    fn accuracy_is_the_share_of_true_answers() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let right = (0..10_000)
            .filter(|i| answer_label(&mut rng, i % CLASSES, 0.9) == i % CLASSES)
            .count();
        assert!((8_800..9_200).contains(&right), "{right}");
    }

    proptest! {
        #[test]
        fn a_wrong_answer_is_another_valid_label(truth in 0usize..CLASSES, seed in any::<u64>()) {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let wrong = answer_label(&mut rng, truth, 0.0);
            prop_assert!(wrong < CLASSES && wrong != truth);
            prop_assert_eq!(answer_label(&mut rng, truth, 1.0), truth);
        }
    }
}
