//! Prometheus metrics: one `Metrics` struct on its own registry, shared as `Arc<Metrics>`.
//!
//! Names and labels are the contract in the README's metrics table; every label is bounded
//! (route labels come from [`crate::route`], reasons and outcomes from the enums here and in
//! [`crate::record`]). Series whose labels are such an enum exist at 0 from the start, so a
//! dashboard's `rate()` and an alert see them before the first event.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

use crate::record::{DeadLetterReason, Reason};

const NAMESPACE: &str = "reviewloop";

/// Why a response that could have been reviewed was not (`reviews_skipped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The review budget was spent.
    OverBudget,
    /// No confidence could be read (counted even when nothing else would divert it).
    NoConfidence,
    /// The body was larger than `max_inspect_bytes`.
    TooLarge,
    /// The Kafka queue was full.
    QueueFull,
    /// Kafka refused or failed the record.
    KafkaError,
    /// The record was to be spooled but the spool was at `kafka.spool_max_bytes`.
    SpoolFull,
    /// The record was to be spooled but the disk write failed.
    SpoolError,
    /// A spooled record was torn or corrupt when read back (counted once per damaged segment).
    SpoolCorrupt,
}

impl SkipReason {
    pub const ALL: [SkipReason; 8] = [
        SkipReason::OverBudget,
        SkipReason::NoConfidence,
        SkipReason::TooLarge,
        SkipReason::QueueFull,
        SkipReason::KafkaError,
        SkipReason::SpoolFull,
        SkipReason::SpoolError,
        SkipReason::SpoolCorrupt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::OverBudget => "over_budget",
            SkipReason::NoConfidence => "no_confidence",
            SkipReason::TooLarge => "too_large",
            SkipReason::QueueFull => "queue_full",
            SkipReason::KafkaError => "kafka_error",
            SkipReason::SpoolFull => "spool_full",
            SkipReason::SpoolError => "spool_error",
            SkipReason::SpoolCorrupt => "spool_corrupt",
        }
    }
}

/// A Kafka delivery report (`kafka_messages_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    Failed,
}

impl DeliveryOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Failed => "failed",
        }
    }
}

/// What became of a reviewer's answer in the joiner (`join_answers_total{outcome}`), counted
/// once per answer at its final outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnswerResult {
    Accepted,
    Duplicate,
    Invalid,
    Orphan,
}

impl AnswerResult {
    pub const ALL: [AnswerResult; 4] = [
        AnswerResult::Accepted,
        AnswerResult::Duplicate,
        AnswerResult::Invalid,
        AnswerResult::Orphan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnswerResult::Accepted => "accepted",
            AnswerResult::Duplicate => "duplicate",
            AnswerResult::Invalid => "invalid",
            AnswerResult::Orphan => "orphan",
        }
    }
}

pub struct Metrics {
    registry: Registry,
    /// `route`, `code` (2xx/4xx/5xx).
    pub requests_total: IntCounterVec,
    /// `route`.
    pub upstream_duration_seconds: HistogramVec,
    /// Requests being served right now.
    pub requests_in_flight: IntGauge,
    /// 1 while the review producer reaches a Kafka broker, else 0.
    pub kafka_up: IntGauge,
    /// `error_type`: the proxy's own error answers (upstream_unreachable, timeout, overloaded…).
    pub proxy_errors_total: IntCounterVec,
    /// Client connections open on the proxy's port.
    pub proxy_connections: IntGauge,
    /// `reason`: client connections the proxy closed or refused at a `[server]` limit.
    pub proxy_connections_closed_total: IntCounterVec,
    /// `route`; buckets in 0.05 steps.
    pub confidence: HistogramVec,
    /// `route`, `reason` (low_confidence/sampled/forced).
    pub reviews_diverted_total: IntCounterVec,
    /// `reason` (over_budget/no_confidence/too_large/queue_full/kafka_error/spool_full/
    /// spool_error/spool_corrupt).
    pub reviews_skipped_total: IntCounterVec,
    /// `topic`, `outcome` (delivered/failed).
    pub kafka_messages_total: IntCounterVec,
    /// `outcome` (accepted/duplicate/invalid/orphan).
    pub join_answers_total: IntCounterVec,
    pub reviews_pending: IntGauge,
    /// Input partitions this joiner owns (one per co-partitioned pair).
    pub join_partitions_assigned: IntGauge,
    pub retraining_records_total: IntCounter,
    /// `reason` (invalid/orphan/expired/no_agreement).
    pub dead_letters_total: IntCounterVec,
    /// Diverted → retraining record.
    pub review_turnaround_seconds: Histogram,
    /// Bytes the review sink's disk spool holds.
    pub spool_bytes: IntGauge,
    /// Review records written to the spool.
    pub spool_written: IntCounter,
    /// Spooled review records delivered to Kafka on replay.
    pub spool_replayed: IntCounter,
    /// `route`: the confidence below which the route diverts now (routes with a sketch).
    pub review_threshold: GaugeVec,
    /// `route`, `reason`, `agreed`: retraining records whose consolidated answer agrees
    /// with the model's (once per reason of the record).
    pub model_agreement_total: IntCounterVec,
    /// `route`, `bucket` ("0.0".."0.9"), `agreed`: the same by the record's confidence.
    pub calibration_total: IntCounterVec,
    /// `reviews_skipped_total`'s series in [`SkipReason::ALL`] order, resolved once.
    skipped: [IntCounter; SkipReason::ALL.len()],
}

/// The calibration bucket of a confidence: its tenth, "0.0" to "0.9" (1.0 falls in "0.9").
pub fn confidence_bucket(confidence: f64) -> &'static str {
    const BUCKETS: [&str; 10] = [
        "0.0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9",
    ];
    BUCKETS[((confidence * 10.0) as usize).min(9)]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
        let hist = |name: &str, help: &str| HistogramOpts::new(name, help).namespace(NAMESPACE);
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(opts(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let requests_total = counter_vec(
            "requests_total",
            "Requests answered by the proxy, by route and status class.",
            &["route", "code"],
        );
        let proxy_errors_total = counter_vec(
            "proxy_errors_total",
            "Error answers the proxy made itself instead of the upstream's.",
            &["error_type"],
        );
        let proxy_connections_closed_total = counter_vec(
            "proxy_connections_closed_total",
            "Client connections the proxy closed or refused at one of its [server] limits, by reason.",
            &["reason"],
        );
        let reviews_diverted_total = counter_vec(
            "reviews_diverted_total",
            "Responses sent to review, by route and reason (a record with two reasons counts in both).",
            &["route", "reason"],
        );
        let reviews_skipped_total = counter_vec(
            "reviews_skipped_total",
            "Responses not sent to review although they could have been, by reason.",
            &["reason"],
        );
        let kafka_messages_total = counter_vec(
            "kafka_messages_total",
            "Kafka delivery reports, by topic and outcome.",
            &["topic", "outcome"],
        );
        let join_answers_total = counter_vec(
            "join_answers_total",
            "Reviewer answers read by the joiner, by outcome.",
            &["outcome"],
        );
        let dead_letters_total = counter_vec(
            "dead_letters_total",
            "Records written to the dead-letter topic, by reason.",
            &["reason"],
        );
        let model_agreement_total = counter_vec(
            "model_agreement_total",
            "Reviewed records whose consolidated answer agrees with the model's (agreed=true) \
             or not, by route and reason; on reason=\"sampled\" an unbiased estimate of the \
             model's accuracy.",
            &["route", "reason", "agreed"],
        );
        let calibration_total = counter_vec(
            "calibration_total",
            "Reviewed records by the model's confidence (buckets of 0.1, \"0.0\"..\"0.9\") \
             and whether the reviewers agreed with the model: a reliability diagram.",
            &["route", "bucket", "agreed"],
        );
        let review_threshold = GaugeVec::new(
            opts(
                "review_threshold",
                "The confidence below which a route diverts right now (target_rate, budget and \
                 confidence_below together), for routes that keep a sketch.",
            ),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(review_threshold.clone()))
            .expect("registered once");
        let upstream_duration_seconds = HistogramVec::new(
            hist(
                "upstream_duration_seconds",
                "Time from forwarding a request to the upstream's response head.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let confidence = HistogramVec::new(
            hist("confidence", "Confidence read from responses (0..1).")
                .buckets(prometheus::linear_buckets(0.05, 0.05, 20).expect("valid buckets")),
            &["route"],
        )
        .expect("valid metric");
        let review_turnaround_seconds = Histogram::with_opts(
            hist(
                "review_turnaround_seconds",
                "Time from a response being diverted to its retraining record.",
            )
            .buckets(vec![
                1.0,
                10.0,
                60.0,
                300.0,
                900.0,
                3600.0,
                4.0 * 3600.0,
                12.0 * 3600.0,
                86400.0,
                3.0 * 86400.0,
                10.0 * 86400.0,
            ]),
        )
        .expect("valid metric");
        let requests_in_flight = IntGauge::with_opts(opts(
            "requests_in_flight",
            "Requests being served by the proxy right now.",
        ))
        .expect("valid metric");
        let proxy_connections = IntGauge::with_opts(opts(
            "proxy_connections",
            "Client connections open on the proxy's port.",
        ))
        .expect("valid metric");
        let kafka_up = IntGauge::with_opts(opts(
            "kafka_up",
            "1 while the review producer reaches a Kafka broker (metadata answered in the last \
             few seconds), else 0.",
        ))
        .expect("valid metric");
        let reviews_pending = IntGauge::with_opts(opts(
            "reviews_pending",
            "Reviews the joiner holds that have not reached their answers yet.",
        ))
        .expect("valid metric");
        let join_partitions_assigned = IntGauge::with_opts(opts(
            "join_partitions_assigned",
            "Input partitions (pairs of review and completed partitions) this joiner owns; \
             summed over a group's joiners it is the partition count once the group is stable.",
        ))
        .expect("valid metric");
        let retraining_records_total = IntCounter::with_opts(opts(
            "retraining_records_total",
            "Retraining records written by the joiner.",
        ))
        .expect("valid metric");
        let spool_bytes = IntGauge::with_opts(opts(
            "spool_bytes",
            "Bytes the review sink's disk spool (kafka.spool_dir) holds.",
        ))
        .expect("valid metric");
        let spool_written = IntCounter::with_opts(opts(
            "spool_written_total",
            "Review records written to the disk spool (undeliverable for now).",
        ))
        .expect("valid metric");
        let spool_replayed = IntCounter::with_opts(opts(
            "spool_replayed_total",
            "Spooled review records delivered to Kafka on replay.",
        ))
        .expect("valid metric");
        for collector in [
            Box::new(spool_bytes.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(spool_written.clone()),
            Box::new(spool_replayed.clone()),
            Box::new(upstream_duration_seconds.clone()),
            Box::new(confidence.clone()),
            Box::new(review_turnaround_seconds.clone()),
            Box::new(requests_in_flight.clone()),
            Box::new(proxy_connections.clone()),
            Box::new(kafka_up.clone()),
            Box::new(reviews_pending.clone()),
            Box::new(join_partitions_assigned.clone()),
            Box::new(retraining_records_total.clone()),
        ] {
            registry.register(collector).expect("registered once");
        }
        let skipped = SkipReason::ALL
            .map(|reason| reviews_skipped_total.with_label_values(&[reason.as_str()]));
        for result in AnswerResult::ALL {
            join_answers_total.with_label_values(&[result.as_str()]);
        }
        for reason in DeadLetterReason::ALL {
            dead_letters_total.with_label_values(&[reason.as_str()]);
        }
        Metrics {
            registry,
            requests_total,
            upstream_duration_seconds,
            requests_in_flight,
            kafka_up,
            proxy_errors_total,
            proxy_connections,
            proxy_connections_closed_total,
            confidence,
            reviews_diverted_total,
            reviews_skipped_total,
            kafka_messages_total,
            join_answers_total,
            reviews_pending,
            join_partitions_assigned,
            retraining_records_total,
            dead_letters_total,
            review_turnaround_seconds,
            spool_bytes,
            spool_written,
            spool_replayed,
            review_threshold,
            model_agreement_total,
            calibration_total,
            skipped,
        }
    }

    /// A response not reviewed for `reason`.
    pub fn review_skipped(&self, reason: SkipReason) {
        self.skipped[reason as usize].inc();
    }

    /// How many responses were not reviewed for `reason` so far.
    pub fn reviews_skipped(&self, reason: SkipReason) -> u64 {
        self.skipped[reason as usize].get()
    }

    /// A response of `route` sent to review, once per reason.
    pub fn review_diverted(&self, route: &str, reason: Reason) {
        self.reviews_diverted_total
            .with_label_values(&[route, reason.as_str()])
            .inc();
    }

    /// `n` delivery reports of `outcome` for `topic`.
    pub fn kafka_reported(&self, topic: &str, outcome: DeliveryOutcome, n: u64) {
        self.kafka_messages_total
            .with_label_values(&[topic, outcome.as_str()])
            .inc_by(n);
    }

    /// Delivery reports of `outcome` for `topic` so far.
    pub fn kafka_reports(&self, topic: &str, outcome: DeliveryOutcome) -> u64 {
        self.kafka_messages_total
            .with_label_values(&[topic, outcome.as_str()])
            .get()
    }

    /// `n` answers that ended as `result` in the joiner.
    pub fn join_answered(&self, result: AnswerResult, n: u64) {
        self.join_answers_total
            .with_label_values(&[result.as_str()])
            .inc_by(n);
    }

    /// `n` dead letters written for `reason`.
    pub fn dead_lettered(&self, reason: DeadLetterReason, n: u64) {
        self.dead_letters_total
            .with_label_values(&[reason.as_str()])
            .inc_by(n);
    }

    /// Dead letters written so far, all reasons together.
    pub fn dead_letters(&self) -> u64 {
        DeadLetterReason::ALL
            .iter()
            .map(|r| {
                self.dead_letters_total
                    .with_label_values(&[r.as_str()])
                    .get()
            })
            .sum()
    }

    /// The registry, for a component that registers metrics of its own.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("text encoding is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The series of one route, each resolved on first use and then kept: counting a request
/// neither hashes its labels nor takes its family's lock (`with_label_values` does both). A
/// series still appears in `/metrics` only once used, as with `with_label_values`.
pub struct RouteSeries {
    label: String,
    requests_total: IntCounterVec,
    upstream_duration_seconds: HistogramVec,
    confidence: HistogramVec,
    review_threshold: GaugeVec,
    reviews_diverted_total: IntCounterVec,
    /// By status class: 1xx..5xx.
    requests: [OnceLock<IntCounter>; 5],
    upstream_duration: OnceLock<Histogram>,
    confidence_seen: OnceLock<Histogram>,
    threshold: OnceLock<Gauge>,
    /// By [`Reason`]: low_confidence, sampled, forced.
    diverted: [OnceLock<IntCounter>; 3],
}

impl RouteSeries {
    /// The series of the route labelled `route` in `metrics`.
    pub fn new(metrics: &Metrics, route: &str) -> RouteSeries {
        RouteSeries {
            label: route.to_owned(),
            requests_total: metrics.requests_total.clone(),
            upstream_duration_seconds: metrics.upstream_duration_seconds.clone(),
            confidence: metrics.confidence.clone(),
            review_threshold: metrics.review_threshold.clone(),
            reviews_diverted_total: metrics.reviews_diverted_total.clone(),
            requests: Default::default(),
            upstream_duration: OnceLock::new(),
            confidence_seen: OnceLock::new(),
            threshold: OnceLock::new(),
            diverted: Default::default(),
        }
    }

    /// The route label these series carry.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A request of this route answered with `status` (`requests_total{route, code}`).
    pub fn request(&self, status: u16) {
        let class = status_class(status);
        let slot = usize::from(class.as_bytes()[0] - b'1');
        self.requests[slot]
            .get_or_init(|| self.requests_total.with_label_values(&[&self.label, class]))
            .inc();
    }

    /// Seconds to the upstream's response head (`upstream_duration_seconds{route}`).
    pub fn upstream_duration(&self, seconds: f64) {
        self.upstream_duration
            .get_or_init(|| {
                self.upstream_duration_seconds
                    .with_label_values(&[&self.label])
            })
            .observe(seconds);
    }

    /// A confidence read from a response (`confidence{route}`).
    pub fn confidence(&self, confidence: f64) {
        self.confidence_seen
            .get_or_init(|| self.confidence.with_label_values(&[&self.label]))
            .observe(confidence);
    }

    /// The route's live threshold (`review_threshold{route}`).
    pub fn threshold(&self, threshold: f64) {
        self.threshold
            .get_or_init(|| self.review_threshold.with_label_values(&[&self.label]))
            .set(threshold);
    }

    /// A response sent to review for `reason` (`reviews_diverted_total{route, reason}`).
    pub fn diverted(&self, reason: Reason) {
        let slot = match reason {
            Reason::LowConfidence => 0,
            Reason::Sampled => 1,
            Reason::Forced => 2,
        };
        self.diverted[slot]
            .get_or_init(|| {
                self.reviews_diverted_total
                    .with_label_values(&[&self.label, reason.as_str()])
            })
            .inc();
    }
}

/// The `code` label of `reviewloop_requests_total`: the status class.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exposed_once_used() {
        let m = Metrics::new();
        m.requests_total
            .with_label_values(&["/invocations", "2xx"])
            .inc();
        m.upstream_duration_seconds
            .with_label_values(&["/invocations"])
            .observe(0.01);
        m.confidence
            .with_label_values(&["/invocations"])
            .observe(0.42);
        m.reviews_diverted_total
            .with_label_values(&["/invocations", "low_confidence"])
            .inc();
        m.reviews_skipped_total
            .with_label_values(&["over_budget"])
            .inc();
        m.kafka_messages_total
            .with_label_values(&["reviewloop.review", "delivered"])
            .inc();
        m.join_answers_total.with_label_values(&["accepted"]).inc();
        m.dead_letters_total.with_label_values(&["orphan"]).inc();
        m.review_turnaround_seconds.observe(5.0);
        let text = m.render();
        for name in [
            "reviewloop_requests_total{code=\"2xx\",route=\"/invocations\"} 1",
            "reviewloop_upstream_duration_seconds_bucket",
            "reviewloop_confidence_bucket{route=\"/invocations\",le=\"0.45\"} 1",
            "reviewloop_reviews_diverted_total",
            "reviewloop_reviews_skipped_total{reason=\"over_budget\"} 1",
            "reviewloop_kafka_messages_total",
            "reviewloop_join_answers_total",
            "reviewloop_reviews_pending 0",
            "reviewloop_join_partitions_assigned 0",
            "reviewloop_retraining_records_total 0",
            "reviewloop_dead_letters_total",
            "reviewloop_review_turnaround_seconds_count 1",
            "reviewloop_reviews_skipped_total{reason=\"spool_full\"} 0",
            "reviewloop_spool_bytes 0",
            "reviewloop_spool_written_total 0",
            "reviewloop_spool_replayed_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }

    #[test]
    fn route_series_count_into_the_labelled_series_and_appear_once_used() {
        let m = Metrics::new();
        let series = RouteSeries::new(&m, "sentiment");
        assert!(!m.render().contains("route=\"sentiment\""));
        series.request(200);
        series.request(204);
        series.request(503);
        series.upstream_duration(0.002);
        series.confidence(0.42);
        series.threshold(0.6);
        series.diverted(Reason::Sampled);
        series.diverted(Reason::Sampled);
        m.review_skipped(SkipReason::TooLarge);
        let get = |code: &str| {
            m.requests_total
                .with_label_values(&["sentiment", code])
                .get()
        };
        assert_eq!((get("2xx"), get("5xx")), (2, 1));
        let text = m.render();
        for line in [
            "reviewloop_requests_total{code=\"2xx\",route=\"sentiment\"} 2",
            "reviewloop_requests_total{code=\"5xx\",route=\"sentiment\"} 1",
            "reviewloop_upstream_duration_seconds_count{route=\"sentiment\"} 1",
            "reviewloop_confidence_bucket{route=\"sentiment\",le=\"0.45\"} 1",
            "reviewloop_review_threshold{route=\"sentiment\"} 0.6",
            "reviewloop_reviews_diverted_total{reason=\"sampled\",route=\"sentiment\"} 2",
            "reviewloop_reviews_skipped_total{reason=\"too_large\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        // Only the classes and reasons used exist.
        assert!(!text.contains("code=\"4xx\""), "{text}");
        assert!(!text.contains("reason=\"forced\""), "{text}");
        assert_eq!(m.reviews_skipped(SkipReason::TooLarge), 1);
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(200), "2xx");
        assert_eq!(status_class(404), "4xx");
        assert_eq!(status_class(504), "5xx");
    }
}
