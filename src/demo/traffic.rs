//! The traffic generator: tickets sent through the proxy over HTTP at a steady rate, each
//! answer checked against the ticket's true team, and tallied per reporting window.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use super::task::{LABELS, Task};
use crate::proxy::headers::X_REVIEWLOOP_REVIEW;
use crate::record::Reason;
use crate::upstream::{Body, full_body};

/// Requests in flight at most; above it the generator waits (the rate drops, and the table
/// shows it).
const MAX_IN_FLIGHT: usize = 256;

/// What the clients saw during one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    /// Answered 2xx with a readable prediction.
    pub answered: u64,
    /// Not answered, a non-2xx status, or an unreadable body.
    pub errors: u64,
    /// Carried `x-reviewloop-review`: the proxy sent the record to review.
    pub reviewed: u64,
    /// The top score was below the review threshold.
    pub low_confidence: u64,
    /// The top label was the ticket's true team.
    pub correct: u64,
    /// Sent to review for the audit sample (`sampled` among the reasons).
    pub sampled: u64,
    /// Of those, how many were right: the accuracy the audit should estimate.
    pub sampled_correct: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.answered += other.answered;
        self.errors += other.errors;
        self.reviewed += other.reviewed;
        self.low_confidence += other.low_confidence;
        self.correct += other.correct;
        self.sampled += other.sampled;
        self.sampled_correct += other.sampled_correct;
    }

    /// `part` as a share of the answered requests (0 when none were answered).
    pub fn share(&self, part: u64) -> f64 {
        if self.answered == 0 {
            0.0
        } else {
            part as f64 / self.answered as f64
        }
    }

    /// The true accuracy on the answers sent to review for the audit sample (0 when none).
    pub fn sampled_accuracy(&self) -> f64 {
        if self.sampled == 0 {
            0.0
        } else {
            self.sampled_correct as f64 / self.sampled as f64
        }
    }

    pub fn accuracy(&self) -> f64 {
        self.share(self.correct)
    }

    pub fn review_rate(&self) -> f64 {
        self.share(self.reviewed)
    }

    pub fn low_confidence_share(&self) -> f64 {
        self.share(self.low_confidence)
    }
}

/// The top label and its score in a Hugging Face answer `[{"label","score"}, …]`.
pub fn top_prediction(body: &[u8]) -> Option<(String, f64)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value
        .as_array()?
        .iter()
        .filter_map(|item| Some((item.get("label")?.as_str()?, item.get("score")?.as_f64()?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(label, score)| (label.to_owned(), score))
}

/// Sends `rps` tickets a second to `proxy` until `stop`, then waits for the answers in flight.
pub async fn run(
    proxy: SocketAddr,
    mut task: Task,
    rps: u32,
    confidence_below: f64,
    tally: Arc<Mutex<Tally>>,
    stop: impl Future<Output = ()>,
) {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build(HttpConnector::new());
    let url = format!("http://{proxy}/invocations");
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    // A generator that fell behind (a busy machine) does not burst to catch up.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut stop => break,
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let ticket = task.ticket();
        let body = serde_json::json!({"inputs": ticket.text}).to_string();
        let request = Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full_body(body))
            .expect("valid request");
        let client = client.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut seen = Tally {
                requests: 1,
                ..Tally::default()
            };
            match exchange(&client, request).await {
                Some((reasons, label, score)) => {
                    let correct = label == LABELS[ticket.label];
                    let sampled = reasons
                        .as_deref()
                        .is_some_and(|r| r.split(',').any(|r| r == Reason::Sampled.as_str()));
                    seen.answered = 1;
                    seen.reviewed = u64::from(reasons.is_some());
                    seen.low_confidence = u64::from(score < confidence_below);
                    seen.correct = u64::from(correct);
                    seen.sampled = u64::from(sampled);
                    seen.sampled_correct = u64::from(sampled && correct);
                }
                None => seen.errors = 1,
            }
            tally.lock().unwrap_or_else(|e| e.into_inner()).add(&seen);
            drop(permit);
        });
    }
    // Every permit back: every answer is in the tally.
    let _ = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// One request: the reasons it was sent to review for (`None`: not sent), and the predicted
/// label and its score.
async fn exchange(
    client: &Client<HttpConnector, Body>,
    request: Request<Body>,
) -> Option<(Option<String>, String, f64)> {
    let response = client.request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let reasons = response
        .headers()
        .get(X_REVIEWLOOP_REVIEW)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let body = response.into_body().collect().await.ok()?.to_bytes();
    let (label, score) = top_prediction(&body)?;
    Some((reasons, label, score))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_top_prediction_is_the_best_score_wherever_it_is() {
        let body = br#"[{"label":"billing","score":0.2},{"label":"account","score":0.7},{"label":"shipping","score":0.1}]"#;
        assert_eq!(top_prediction(body), Some(("account".into(), 0.7)));
        assert_eq!(top_prediction(b"[]"), None);
        assert_eq!(top_prediction(br#"{"error":"x"}"#), None);
    }

    #[test]
    fn shares_are_of_answered_requests() {
        let mut tally = Tally::default();
        assert_eq!(tally.accuracy(), 0.0);
        tally.add(&Tally {
            requests: 10,
            answered: 8,
            errors: 2,
            reviewed: 2,
            low_confidence: 4,
            correct: 6,
            ..Tally::default()
        });
        assert_eq!(tally.accuracy(), 0.75);
        assert_eq!(tally.review_rate(), 0.25);
        assert_eq!(tally.low_confidence_share(), 0.5);
    }
}
