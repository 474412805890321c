//! The fast model server the benchmark puts behind every proxy: a minimal hyper server on
//! 127.0.0.1:0 answering a ~1 KB Hugging-Face text-classification result (all 28 go_emotions
//! labels with scores), and a server-sent-events stream for time-to-first-event.
//!
//! Confidence is deterministic: every 10th answer, counted across all connections, has a top
//! score of 0.42 and every other one 0.97, so with `review.confidence_below = 0.7` exactly 10 %
//! of responses are diverted, whatever the concurrency.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{Request, Response, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// One answer in `LOW_EVERY` has a confidence under the proxy's threshold.
pub const LOW_EVERY: u64 = 10;
pub const HIGH_SCORE: f64 = 0.97;
pub const LOW_SCORE: f64 = 0.42;
/// The SSE stream: one event at once, then `SSE_MORE_EVENTS` more, `SSE_GAP` apart.
pub const SSE_MORE_EVENTS: usize = 4;
pub const SSE_GAP: Duration = Duration::from_millis(25);
pub const SSE_PATH: &str = "/sse";

const LABELS: [&str; 28] = [
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
];

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// `[[{"label","score"}…]]` sorted by score, the top one `top`, the rest sharing `1 - top`.
pub fn classification(top: f64) -> Bytes {
    let rest = LABELS.len() - 1;
    // Decreasing scores under `top` that add up to 1 - top.
    let weights: Vec<f64> = (0..rest).map(|i| (rest - i) as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut entries = vec![format!(r#"{{"label":"{}","score":{top:.10}}}"#, LABELS[0])];
    for (label, weight) in LABELS[1..].iter().zip(&weights) {
        let score = (1.0 - top) * weight / total;
        entries.push(format!(r#"{{"label":"{label}","score":{score:.10}}}"#));
    }
    Bytes::from(format!("[[{}]]", entries.join(",")))
}

struct Answers {
    high: Bytes,
    low: Bytes,
    served: AtomicU64,
}

/// A running upstream; it stops when its runtime does.
pub struct Upstream {
    pub addr: SocketAddr,
    answers: Arc<Answers>,
}

impl Upstream {
    /// Binds 127.0.0.1:0 and serves on the current runtime.
    pub async fn start() -> std::io::Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let answers = Arc::new(Answers {
            high: classification(HIGH_SCORE),
            low: classification(LOW_SCORE),
            served: AtomicU64::new(0),
        });
        let shared = answers.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let answers = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let answers = answers.clone();
                        async move { Ok::<_, Infallible>(answer(request, &answers).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Upstream { addr, answers })
    }

    /// Classification answers served so far.
    pub fn served(&self) -> u64 {
        self.answers.served.load(Ordering::Relaxed)
    }

    /// The size of a classification answer, in bytes.
    pub fn answer_bytes(&self) -> usize {
        self.answers.high.len()
    }
}

async fn answer(request: Request<Incoming>, answers: &Answers) -> Response<Body> {
    if request.uri().path() == SSE_PATH {
        return sse();
    }
    // Read the request as a model server would before answering.
    let _ = request.into_body().collect().await;
    let n = answers.served.fetch_add(1, Ordering::Relaxed);
    let body = if n.is_multiple_of(LOW_EVERY) {
        answers.low.clone()
    } else {
        answers.high.clone()
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body).boxed_unsync())
        .expect("static response")
}

/// An LLM-style token stream: the first event at once, the rest `SSE_GAP` apart.
fn sse() -> Response<Body> {
    let events = stream::unfold(0usize, |i| async move {
        if i > SSE_MORE_EVENTS {
            return None;
        }
        if i > 0 {
            tokio::time::sleep(SSE_GAP).await;
        }
        let event = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token{i}\"}}}}]}}\n\n"
        );
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(event))), i + 1))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        // What SSE servers send so nginx does not buffer the stream.
        .header("x-accel-buffering", "no")
        .body(StreamBody::new(events).boxed_unsync())
        .expect("static response")
}

#[cfg(test)]
mod tests {
    use reviewloop::confidence::Extractor;
    use reviewloop::config::Preset;

    use super::*;

    #[test]
    fn answers_are_about_a_kilobyte_and_reviewloop_reads_their_top_score() {
        let auto = Extractor::preset(Preset::Auto);
        for top in [HIGH_SCORE, LOW_SCORE] {
            let body = classification(top);
            assert!((900..1300).contains(&body.len()), "{} bytes", body.len());
            let confidence = auto.extract(Some("application/json"), &body);
            assert!(
                confidence.is_some_and(|c| (c - top).abs() < 1e-9),
                "{confidence:?} for {top}"
            );
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let sum: f64 = value[0]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["score"].as_f64().unwrap())
                .sum();
            assert!((sum - 1.0).abs() < 1e-6, "scores add up to {sum}");
        }
    }
}
