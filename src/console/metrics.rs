//! The console's metrics, registered on the process's registry: items by state, answers per
//! route, time to answer, and every refusal by reason.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts};

use super::queue::Refusal;
use crate::metrics::Metrics;

/// Distinct `route` labels at most; more are counted as `other` (routes come from Kafka).
const MAX_ROUTE_LABELS: usize = 64;

/// Why the console turned a request down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `auth = "header"` without the header.
    NoIdentity,
    /// A wrong name or token at sign-in.
    SignIn,
    /// A POST without the right CSRF token.
    Csrf,
    /// A POST sent from another site (`Sec-Fetch-Site`).
    CrossSite,
    /// An answer the template refused (e.g. invalid JSON).
    InvalidAnswer,
    /// The broker did not acknowledge the answer.
    KafkaError,
    Queue(Refusal),
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::NoIdentity => "no_identity",
            Refused::SignIn => "sign_in",
            Refused::Csrf => "csrf",
            Refused::CrossSite => "cross_site",
            Refused::InvalidAnswer => "invalid_answer",
            Refused::KafkaError => "kafka_error",
            Refused::Queue(refusal) => refusal.as_str(),
        }
    }
}

/// Which input a skipped record came from (a bounded label, not the topic's name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    Review,
    Completed,
}

impl Input {
    pub fn as_str(self) -> &'static str {
        match self {
            Input::Review => "review",
            Input::Completed => "completed",
        }
    }
}

pub struct ConsoleMetrics {
    /// `state`: open (waiting for a reviewer) or leased (shown to one now).
    items: IntGaugeVec,
    answers_total: IntCounterVec,
    answer_seconds: Histogram,
    refusals_total: IntCounterVec,
    invalid_records_total: IntCounterVec,
    routes: Mutex<HashSet<String>>,
}

impl ConsoleMetrics {
    /// Registers the console's collectors on `metrics`' registry.
    pub fn register(metrics: &Metrics) -> Result<ConsoleMetrics, prometheus::Error> {
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("reviewloop");
        let items = IntGaugeVec::new(
            opts(
                "console_items",
                "Open review items in the console: open (waiting for a reviewer) or leased (shown \
                 to a reviewer whose time limit has not run out).",
            ),
            &["state"],
        )?;
        let answers_total = IntCounterVec::new(
            opts(
                "console_answers_total",
                "Answers published by the console (acknowledged by the broker), by route.",
            ),
            &["route"],
        )?;
        let answer_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "console_answer_seconds",
                "Time from an item being shown to a reviewer to their answer.",
            )
            .namespace("reviewloop")
            .buckets(vec![
                1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            ]),
        )?;
        let refusals_total = IntCounterVec::new(
            opts(
                "console_refusals_total",
                "Requests the console turned down, by reason (no_identity, sign_in, csrf, \
                 cross_site, invalid_answer, kafka_error, closed, already_answered, \
                 in_progress, lease_lost).",
            ),
            &["reason"],
        )?;
        let invalid_records_total = IntCounterVec::new(
            opts(
                "console_invalid_records_total",
                "Records the console could not read, by input (review or completed); the \
                 joiner dead-letters them.",
            ),
            &["input"],
        )?;
        let registry = metrics.registry();
        registry.register(Box::new(items.clone()))?;
        registry.register(Box::new(answers_total.clone()))?;
        registry.register(Box::new(answer_seconds.clone()))?;
        registry.register(Box::new(refusals_total.clone()))?;
        registry.register(Box::new(invalid_records_total.clone()))?;
        for state in ["open", "leased"] {
            items.with_label_values(&[state]).set(0);
        }
        Ok(ConsoleMetrics {
            items,
            answers_total,
            answer_seconds,
            refusals_total,
            invalid_records_total,
            routes: Mutex::new(HashSet::new()),
        })
    }

    /// `open` open items of which `leased` are leased.
    pub fn set_items(&self, open: usize, leased: usize) {
        let waiting = open.saturating_sub(leased);
        self.items.with_label_values(&["open"]).set(waiting as i64);
        self.items.with_label_values(&["leased"]).set(leased as i64);
    }

    pub fn answered(&self, route: &str, seconds: Option<f64>) {
        let label = {
            let mut routes = self.routes.lock().expect("routes lock");
            if routes.contains(route) || routes.len() < MAX_ROUTE_LABELS {
                routes.insert(route.to_owned());
                route
            } else {
                "other"
            }
        };
        self.answers_total.with_label_values(&[label]).inc();
        if let Some(seconds) = seconds {
            self.answer_seconds.observe(seconds);
        }
    }

    pub fn refused(&self, reason: Refused) {
        self.refusals_total
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn invalid_record(&self, input: Input) {
        self.invalid_records_total
            .with_label_values(&[input.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_console_metrics_are_exposed_with_bounded_routes() {
        let metrics = Metrics::new();
        let console = ConsoleMetrics::register(&metrics).unwrap();
        console.set_items(5, 2);
        for i in 0..100 {
            console.answered(&format!("route-{i}"), Some(12.0));
        }
        console.refused(Refused::Queue(Refusal::LeaseLost));
        let text = metrics.render();
        for line in [
            "reviewloop_console_items{state=\"open\"} 3",
            "reviewloop_console_items{state=\"leased\"} 2",
            "reviewloop_console_answers_total{route=\"route-0\"} 1",
            "reviewloop_console_answers_total{route=\"other\"} 36",
            "reviewloop_console_answer_seconds_count 100",
            "reviewloop_console_refusals_total{reason=\"lease_lost\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(
            ConsoleMetrics::register(&metrics).is_err(),
            "registered once"
        );
    }
}
