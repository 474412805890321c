//! The review pipeline behind the proxy's hook: decide, count, build and send the record.
//!
//! For each completed 2xx exchange: the route's [`Policy`](crate::decision::Policy) reads the
//! confidence and applies its conditions, sampling, budget and override; the decision's metrics
//! are counted here (the policy is pure); a diverted exchange becomes a [`ReviewRecord`], which
//! the route's [`Redactor`](crate::redact::Redactor) cleans (the decision was made on the
//! original response; only the record changes), handed to the [`ReviewSink`] — without waiting in `delivery = "async"`, after the broker's ack in `sync`.
//! A failed ack never changes the client's answer: reviews are a side channel, so the response
//! goes out unchanged (without `x-reviewloop-review`, since the review was not recorded) and the
//! failure is counted and logged.

use std::sync::Arc;
use std::time::Instant;

use tracing::warn;

use crate::decision::{Decision, DecisionInput};
use crate::exchange::{BoxFuture, Captured, Exchange, ExchangeHook, Verdict};
use crate::kafka::ReviewSink;
use crate::metrics::{Metrics, SkipReason};
use crate::record::{Payload, ResponsePayload, ReviewRecord, rfc3339_millis};
use crate::redact::RedactionMetrics;
use crate::route::RouteTable;

pub struct ReviewPipeline {
    sink: Arc<ReviewSink>,
    metrics: Arc<Metrics>,
    redactions: RedactionMetrics,
}

impl ReviewPipeline {
    pub fn new(sink: Arc<ReviewSink>, metrics: Arc<Metrics>, routes: &RouteTable) -> ReviewPipeline {
        let redactions = RedactionMetrics::register(&metrics, routes.redactors());
        ReviewPipeline {
            sink,
            metrics,
            redactions,
        }
    }

    fn decide(&self, exchange: &Exchange) -> Decision {
        let input = DecisionInput {
            id: &exchange.id,
            request_body: &exchange.request.body,
            response_content_type: exchange.response.content_type.as_deref(),
            response_body: &exchange.response.body,
            force: exchange.force,
        };
        let decision = exchange.route.policy().decide(&input, Instant::now());
        self.count(exchange, &decision);
        decision
    }

    fn count(&self, exchange: &Exchange, decision: &Decision) {
        let route = exchange.route.label();
        if let Some(threshold) = decision.threshold {
            self.metrics
                .review_threshold
                .with_label_values(&[route])
                .set(threshold);
        }
        match decision.confidence {
            Some(confidence) => self
                .metrics
                .confidence
                .with_label_values(&[route])
                .observe(confidence),
            None => self.metrics.review_skipped(SkipReason::NoConfidence),
        }
        if decision.over_budget {
            self.metrics.review_skipped(SkipReason::OverBudget);
        } else {
            for &reason in &decision.reasons {
                self.metrics.review_diverted(route, reason);
            }
        }
    }
}

/// The record a diverted exchange becomes, before redaction.
pub fn review_record(exchange: &Exchange, decision: &Decision) -> ReviewRecord {
    let payload =
        |captured: &Captured| Payload::from_bytes(captured.content_type.as_deref(), &captured.body);
    ReviewRecord {
        id: exchange.id.clone(),
        time: rfc3339_millis(exchange.received_at),
        route: exchange.route.label().to_owned(),
        request: payload(&exchange.request),
        response: ResponsePayload {
            status: exchange.status,
            payload: payload(&exchange.response),
        },
        confidence: decision.confidence,
        reasons: decision.reasons.clone(),
        sample_percent: decision.sample_percent,
        conditions: decision.conditions.clone(),
        model: exchange.model.clone(),
        truncated: exchange.request.truncated || exchange.response.truncated,
        traceparent: exchange.traceparent.clone(),
        redaction: None,
    }
}

impl ExchangeHook for ReviewPipeline {
    fn on_exchange(&self, exchange: Exchange) -> BoxFuture<Verdict> {
        let decision = self.decide(&exchange);
        if !decision.diverted() {
            return Box::pin(async { Verdict::default() });
        }
        let sink = self.sink.clone();
        let redactions = self.redactions.clone();
        // Built and redacted in the future: for a streamed response the proxy spawns it, so
        // neither runs on the response's path.
        Box::pin(async move {
            let mut record = review_record(&exchange, &decision);
            exchange.route.redactor().apply(&mut record);
            if let Some(redaction) = &record.redaction {
                redactions.count(redaction);
            }
            match sink.submit(&record).await {
                Ok(()) => Verdict {
                    reasons: decision.reasons,
                },
                Err(e) => {
                    warn!(id = %record.id, error = %e, "review record not acknowledged by Kafka");
                    Verdict::default()
                }
            }
        })
    }
}
