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
use crate::kafka::{RecordMeta, ReviewSink};
use crate::metrics::{Metrics, RouteSeries, SkipReason};
use crate::record::{
    Payload, PayloadRef, ResponsePayload, ResponsePayloadRef, ReviewRecord, ReviewRecordRef,
    rfc3339_millis,
};
use crate::redact::RedactionMetrics;
use crate::route::{Route, RouteTable};

pub struct ReviewPipeline {
    sink: Arc<ReviewSink>,
    metrics: Arc<Metrics>,
    /// Per route, in [`RouteTable::routes`] order: its series, resolved once.
    series: Vec<RouteSeries>,
    redactions: RedactionMetrics,
}

impl ReviewPipeline {
    pub fn new(sink: Arc<ReviewSink>, metrics: Arc<Metrics>, routes: &RouteTable) -> ReviewPipeline {
        let redactions = RedactionMetrics::register(&metrics, routes.redactors());
        let series = routes
            .routes()
            .map(|route| RouteSeries::new(&metrics, route.label()))
            .collect();
        ReviewPipeline {
            sink,
            metrics,
            series,
            redactions,
        }
    }

    /// Runs `count` on `route`'s series; a route of another table (a test's) gets fresh ones.
    fn series(&self, route: &Route, count: impl FnOnce(&RouteSeries)) {
        match self.series.get(route.index()) {
            Some(series) if series.label() == route.label() => count(series),
            _ => count(&RouteSeries::new(&self.metrics, route.label())),
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
        self.series(&exchange.route, |series| {
            if let Some(threshold) = decision.threshold {
                series.threshold(threshold);
            }
            match decision.confidence {
                Some(confidence) => series.confidence(confidence),
                None => self.metrics.review_skipped(SkipReason::NoConfidence),
            }
            if decision.over_budget {
                self.metrics.review_skipped(SkipReason::OverBudget);
            } else {
                for &reason in &decision.reasons {
                    series.diverted(reason);
                }
            }
        });
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

/// [`review_record`] borrowed from the exchange: the same JSON, with the bodies written as they
/// were captured instead of parsed into `Value`s and written again (for routes that do not
/// redact; redaction needs the tree).
pub fn review_record_ref<'a>(exchange: &'a Exchange, decision: &'a Decision) -> ReviewRecordRef<'a> {
    let payload = |captured: &'a Captured, is_json: bool| {
        PayloadRef::from_parsed_bytes(captured.content_type.as_deref(), &captured.body, is_json)
    };
    ReviewRecordRef {
        id: &exchange.id,
        time: rfc3339_millis(exchange.received_at),
        route: exchange.route.label(),
        request: payload(&exchange.request, false),
        response: ResponsePayloadRef::new(
            exchange.status,
            // The decision parsed the response already (the same bytes).
            payload(&exchange.response, decision.response_is_json),
        ),
        confidence: decision.confidence,
        reasons: &decision.reasons,
        sample_percent: decision.sample_percent,
        conditions: &decision.conditions,
        model: &exchange.model,
        truncated: exchange.request.truncated || exchange.response.truncated,
        traceparent: exchange.traceparent.as_deref(),
    }
}

/// The record of a route that does not redact, serialized from the captured bytes; `None`
/// when it needs the `Value` path (redaction, or too large: cut to fit there).
fn encoded_without_redaction(
    exchange: &Exchange,
    decision: &Decision,
    max_bytes: usize,
) -> Option<(String, Vec<u8>)> {
    if exchange.route.redactor().is_active() {
        return None;
    }
    let record = review_record_ref(exchange, decision);
    let bytes = serde_json::to_vec(&record).expect("a review record serializes to JSON");
    (bytes.len() <= max_bytes).then_some((record.time, bytes))
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
            if let Some((time, bytes)) =
                encoded_without_redaction(&exchange, &decision, sink.max_record_bytes())
            {
                let meta = RecordMeta {
                    id: &exchange.id,
                    time: &time,
                    traceparent: exchange.traceparent.as_deref(),
                };
                return match sink.submit_encoded(meta, bytes).await {
                    Ok(()) => Verdict {
                        reasons: decision.reasons,
                    },
                    Err(e) => {
                        warn!(id = %exchange.id, error = %e, "review record not acknowledged by Kafka");
                        Verdict::default()
                    }
                };
            }
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use bytes::Bytes;
    use serde_json::Value;

    use super::*;
    use crate::record::{ModelInfo, Reason};

    fn exchange(request: &'static [u8], response: &'static [u8]) -> Exchange {
        let table = RouteTable::new(
            &Default::default(),
            &Default::default(),
            &Default::default(),
            &[],
        )
        .unwrap();
        Exchange {
            id: "0190a6e2-7c1a-7d3e-8f00-000000000001".into(),
            route: table.resolve("/invocations").clone(),
            received_at: SystemTime::UNIX_EPOCH + Duration::from_millis(1_732_000_000_123),
            request: Captured {
                content_type: Some("application/json".into()),
                body: Bytes::from_static(request),
                truncated: false,
            },
            status: 200,
            response: Captured {
                content_type: Some("application/json; charset=utf-8".into()),
                body: Bytes::from_static(response),
                truncated: true,
            },
            force: None,
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            model: ModelInfo {
                target_model: Some("m.tar.gz".into()),
                variant: None,
            },
        }
    }

    /// The decision of the exchange's own route.
    fn decided(exchange: &Exchange) -> Decision {
        let input = DecisionInput {
            id: &exchange.id,
            request_body: &exchange.request.body,
            response_content_type: exchange.response.content_type.as_deref(),
            response_body: &exchange.response.body,
            force: None,
        };
        exchange.route.policy().decide(&input, Instant::now())
    }

    #[test]
    fn the_borrowed_record_is_the_record_field_for_field() {
        let decision = Decision {
            confidence: Some(0.42),
            reasons: vec![Reason::LowConfidence, Reason::Sampled],
            conditions: vec!["ConfidenceCheck".into()],
            sample_percent: 1.0,
            over_budget: false,
            threshold: None,
            response_is_json: false,
        };
        for (request, response) in [
            (&br#"{"inputs": "I love it"}"#[..], &br#"[[{"label":"joy","score":0.42}]]"#[..]),
            (b"not json", b"\xff\xfe"),
            (b"{\"cut\": [1", b"1e400"),
        ] {
            let exchange = exchange(request, response);
            // A fixed decision, and the route's own (which may have parsed the response).
            let decided = decided(&exchange);
            for decision in [&decision, &decided] {
                let by_value = serde_json::to_value(review_record(&exchange, decision)).unwrap();
                let text = serde_json::to_vec(&review_record_ref(&exchange, decision)).unwrap();
                let by_ref: Value = serde_json::from_slice(&text).unwrap();
                assert_eq!(by_ref, by_value);
                let record: ReviewRecord = serde_json::from_slice(&text).unwrap();
                assert_eq!(record.id, exchange.id);
            }
        }
        // The route's decision on the first pair parsed its response (the typed reader).
        let first = exchange(br#"{"inputs": "I love it"}"#, br#"[[{"label":"joy","score":0.42}]]"#);
        assert!(decided(&first).response_is_json);
    }
}
