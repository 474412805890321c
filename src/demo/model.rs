//! The demo's model server: the [`Learner`] behind a Hugging-Face-style text-classification
//! endpoint, and the incremental trainer that feeds it every record of the retraining topic.
//!
//! `POST` any path with `{"inputs": "text"}` answers `[{"label", "score"}, …]` over every label,
//! best first (what a Hugging Face pipeline with `top_k=None` returns); `{"inputs": [..]}`
//! answers one such list per text. `GET /health` answers 200.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rdkafka::Message;
use rdkafka::consumer::Consumer;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use super::learner::{Features, Learner};
use super::task::{CLASSES, LABELS, Task, argmax};
use crate::config::Config;
use crate::record::{Encoding, RetrainingRecord};
use crate::upstream::{Body, full_body};

/// Larger request bodies are refused: the demo's tickets are a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A conservative online learning rate: each labelled ticket nudges the model.
const LEARNING_RATE: f64 = 0.5;

/// The model, shared by the server (reads) and the trainer (writes).
pub struct Model {
    learner: RwLock<Learner>,
    learned: AtomicU64,
    rejected: AtomicU64,
}

impl Model {
    /// A weak start: one pass over `pilot` labelled tickets.
    pub fn pilot(task: &mut Task, pilot: usize) -> Model {
        let mut learner = Learner::new(CLASSES, LEARNING_RATE);
        for _ in 0..pilot {
            let ticket = task.ticket();
            learner.learn(&Features::of(&ticket.text), ticket.label);
        }
        Model {
            learner: RwLock::new(learner),
            learned: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Label probabilities, in [`LABELS`] order.
    pub fn predict(&self, text: &str) -> Vec<f64> {
        let features = Features::of(text);
        self.learner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .predict(&features)
    }

    /// Learns one retraining record; `false` (and counted) when it carries no usable example.
    pub fn learn_record(&self, record: &RetrainingRecord) -> bool {
        let Some((text, label)) = example(record) else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let features = Features::of(text);
        self.learner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .learn(&features, label);
        self.learned.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Retraining records learned from.
    pub fn learned(&self) -> u64 {
        self.learned.load(Ordering::Relaxed)
    }

    /// Retraining records without a text and a known label.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// How a model does on held-out tickets: its accuracy, and the share it is unsure of (top
/// score below `confidence_below`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    pub accuracy: f64,
    pub unsure: f64,
}

/// Scores `model` on `count` tickets of `task` (a fork the model never saw).
pub fn evaluate(model: &Model, task: &mut Task, count: usize, confidence_below: f64) -> Evaluation {
    let (mut correct, mut unsure) = (0usize, 0usize);
    for _ in 0..count {
        let ticket = task.ticket();
        let p = model.predict(&ticket.text);
        correct += usize::from(argmax(&p) == ticket.label);
        unsure += usize::from(p.iter().all(|p| *p < confidence_below));
    }
    let share = |n: usize| n as f64 / count.max(1) as f64;
    Evaluation {
        accuracy: share(correct),
        unsure: share(unsure),
    }
}

/// The text and label index a retraining record teaches, if it has both.
fn example(record: &RetrainingRecord) -> Option<(&str, usize)> {
    if record.request.encoding != Encoding::Json {
        return None;
    }
    let text = record.request.body.get("inputs")?.as_str()?;
    let label = record.label.get("label")?.as_str()?;
    let index = LABELS.iter().position(|l| *l == label)?;
    Some((text, index))
}

/// The Hugging Face answer for one text: every label with its score, best first.
pub fn label_scores(probabilities: &[f64]) -> Value {
    let mut ranked: Vec<(usize, f64)> = probabilities.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    Value::Array(
        ranked
            .into_iter()
            .map(|(i, score)| json!({"label": LABELS[i], "score": score}))
            .collect(),
    )
}

/// The answer to one request body, or the client error to send.
fn answer(model: &Model, body: &[u8]) -> Result<Value, &'static str> {
    const USAGE: &str = r#"expected {"inputs": "text"} or {"inputs": ["text", ...]}"#;
    let request: Value = serde_json::from_slice(body).map_err(|_| USAGE)?;
    match request.get("inputs") {
        Some(Value::String(text)) => Ok(label_scores(&model.predict(text))),
        Some(Value::Array(texts)) => texts
            .iter()
            .map(|t| t.as_str().map(|t| label_scores(&model.predict(t))))
            .collect::<Option<Vec<Value>>>()
            .map(Value::Array)
            .ok_or(USAGE),
        _ => Err(USAGE),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full_body(value.to_string()))
        .expect("valid response")
}

async fn handle(model: Arc<Model>, request: Request<Incoming>) -> Response<Body> {
    if request.method() == Method::GET {
        return json_response(StatusCode::OK, &json!({"status": "ok"}));
    }
    let body = match Limited::new(request.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"error": "request body too large or cut short"}),
            );
        }
    };
    match answer(&model, &body) {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(message) => json_response(StatusCode::BAD_REQUEST, &json!({"error": message})),
    }
}

/// Serves `model` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, model: Arc<Model>, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let model = model.clone();
                let service = service_fn(move |request| {
                    let model = model.clone();
                    async move { Ok::<_, Infallible>(handle(model, request).await) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        debug!(error = %e, "model server connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => return,
        }
    }
}

/// The incremental trainer: reads the retraining topic (committed records only) from the
/// beginning and teaches the model each record, until `shutdown`.
pub async fn train(
    config: &Config,
    bootstrap: &str,
    model: Arc<Model>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let topic = &config.kafka.retraining_topic;
    let consumer = super::assigned_consumer(
        config,
        bootstrap,
        "reviewloop-demo-trainer",
        topic,
        &[("isolation.level", "read_committed")],
    )
    .await?;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            received = consumer.recv() => match received {
                Ok(message) => {
                    let record = message
                        .payload()
                        .and_then(|bytes| serde_json::from_slice::<RetrainingRecord>(bytes).ok());
                    match record {
                        Some(record) => {
                            model.learn_record(&record);
                        }
                        None => {
                            model.rejected.fetch_add(1, Ordering::Relaxed);
                            warn!(offset = message.offset(), "unreadable retraining record skipped");
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %e, "retraining topic read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
    consumer.unassign()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Answer, Payload, ResponsePayload};

    fn record(body: Value, label: Value) -> RetrainingRecord {
        RetrainingRecord {
            id: "r1".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            route: "/invocations".into(),
            request: Payload {
                content_type: Some("application/json".into()),
                encoding: Encoding::Json,
                body,
            },
            response: ResponsePayload {
                status: 200,
                payload: Payload::from_bytes(Some("application/json"), b"[]"),
            },
            confidence: Some(0.4),
            reasons: vec![],
            label,
            agreement: 1.0,
            agreeing: 1,
            answered: 1,
            answers: vec![Answer {
                reviewer: "r".into(),
                answer: json!({}),
                submitted_at: None,
                time_spent_seconds: None,
            }],
            reviewed_at: "2026-01-01T00:00:01.000Z".into(),
            model: Default::default(),
            traceparent: None,
            model_label: None,
            model_agreed: None,
            redaction: None,
        }
    }

    #[test]
    fn answers_are_hugging_face_shaped_best_first() {
        let model = Model::pilot(&mut Task::new(1), 50);
        let one = answer(&model, br#"{"inputs": "I forgot my password"}"#).unwrap();
        let scores: Vec<f64> = one
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["score"].as_f64().unwrap())
            .collect();
        assert_eq!(scores.len(), CLASSES);
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        assert!((scores.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let batch = answer(&model, br#"{"inputs": ["a", "b"]}"#).unwrap();
        assert_eq!(batch.as_array().unwrap().len(), 2);
        assert!(batch[1][0]["label"].is_string());
        // And the proxy reads it as one prediction with the top score as confidence.
        let confidence = crate::confidence::Extractor::preset(crate::config::Preset::Auto)
            .extract(Some("application/json"), one.to_string().as_bytes());
        assert_eq!(confidence, Some(scores[0]));
    }

    #[test]
    fn the_pilot_model_is_weak_and_unsure_and_records_make_it_better() {
        let task = Task::new(42);
        let model = Model::pilot(&mut task.fork(1), crate::demo::PILOT_TICKETS);
        let before = evaluate(&model, &mut task.fork(3), 1000, 0.7);
        assert!((0.35..0.75).contains(&before.accuracy), "{before:?}");
        assert!(before.unsure > 0.9, "{before:?}");
        let mut reviewed = task.fork(2);
        for _ in 0..500 {
            let ticket = reviewed.ticket();
            let label = json!({"label": LABELS[ticket.label]});
            assert!(model.learn_record(&record(json!({"inputs": ticket.text}), label)));
        }
        let after = evaluate(&model, &mut task.fork(3), 1000, 0.7);
        assert!(after.accuracy > 0.9, "{after:?}");
        assert!(after.unsure < before.unsure - 0.3, "{after:?}");
    }

    #[test]
    fn bad_requests_are_refused_with_a_hint() {
        let model = Model::pilot(&mut Task::new(1), 0);
        for body in [&b"not json"[..], br#"{"text": "x"}"#, br#"{"inputs": [1]}"#] {
            assert!(answer(&model, body).unwrap_err().contains("inputs"));
        }
    }

    #[test]
    fn retraining_records_teach_and_bad_ones_are_counted() {
        let model = Model::pilot(&mut Task::new(1), 0);
        let text = "my package has not arrived yet";
        let before = model.predict(text)[1];
        for _ in 0..5 {
            assert!(model.learn_record(&record(
                json!({"inputs": text}),
                json!({"label": "shipping"})
            )));
        }
        assert!(model.predict(text)[1] > before + 0.2);
        assert!(!model.learn_record(&record(json!({"inputs": text}), json!({"label": "cats"}))));
        assert!(!model.learn_record(&record(json!({"x": 1}), json!({"label": "shipping"}))));
        assert_eq!((model.learned(), model.rejected()), (5, 2));
    }
}
