//! The bridge's metrics, registered on the process's registry: tasks imported, answers
//! published (by where the annotation was seen), what was skipped and why, Label Studio API
//! errors by kind, webhook calls refused, and answers Kafka did not acknowledge. Every
//! labelled series exists at 0 from the start.

use prometheus::{IntCounter, IntCounterVec, Opts};

use super::api::ApiErrorKind;
use crate::metrics::Metrics;

/// Where the bridge saw an annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Webhook,
    CatchUp,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Webhook, Source::CatchUp];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Webhook => "webhook",
            Source::CatchUp => "catch_up",
        }
    }
}

/// Why a review record or an annotation was passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// A review record that is not one (the joiner dead-letters it).
    InvalidRecord,
    /// A review record of another route than `label_studio.route`.
    OtherRoute,
    /// A review record whose task exists already (a redelivery).
    AlreadyImported,
    /// The annotator skipped the task.
    Cancelled,
    /// An annotation with nothing labeled.
    Empty,
    /// An annotation of a task the bridge did not import.
    NoId,
    /// An annotation whose answer cannot be read (e.g. a `json` answer that is not JSON).
    Unreadable,
    /// A change to an annotation already published: the joiner counts a reviewer's first
    /// answer for an item.
    Updated,
}

impl Skip {
    pub const ALL: [Skip; 8] = [
        Skip::InvalidRecord,
        Skip::OtherRoute,
        Skip::AlreadyImported,
        Skip::Cancelled,
        Skip::Empty,
        Skip::NoId,
        Skip::Unreadable,
        Skip::Updated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Skip::InvalidRecord => "invalid_record",
            Skip::OtherRoute => "other_route",
            Skip::AlreadyImported => "already_imported",
            Skip::Cancelled => "cancelled",
            Skip::Empty => "empty",
            Skip::NoId => "no_id",
            Skip::Unreadable => "unreadable",
            Skip::Updated => "updated",
        }
    }
}

/// Why a webhook call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No shared secret, or the wrong one.
    Secret,
    /// Not a JSON annotation event.
    Invalid,
    /// Not `POST /webhook`.
    NotFound,
}

impl Refused {
    pub const ALL: [Refused; 3] = [Refused::Secret, Refused::Invalid, Refused::NotFound];

    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Secret => "secret",
            Refused::Invalid => "invalid",
            Refused::NotFound => "not_found",
        }
    }
}

pub struct BridgeMetrics {
    tasks_imported: IntCounter,
    answers_published: IntCounterVec,
    skipped: IntCounterVec,
    api_errors: IntCounterVec,
    webhook_refused: IntCounterVec,
    publish_failures: IntCounter,
}

impl BridgeMetrics {
    pub fn register(metrics: &Metrics) -> Result<BridgeMetrics, prometheus::Error> {
        let opts = |name: &str, help: &str| Opts::new(name, help).namespace("reviewloop");
        let tasks_imported = IntCounter::with_opts(opts(
            "label_studio_tasks_imported_total",
            "Review records imported into Label Studio as tasks.",
        ))?;
        let answers_published = IntCounterVec::new(
            opts(
                "label_studio_answers_published_total",
                "Label Studio annotations published to the completed topic (acknowledged by \
                 the broker), by where the bridge saw them (webhook or catch_up).",
            ),
            &["source"],
        )?;
        let skipped = IntCounterVec::new(
            opts(
                "label_studio_skipped_total",
                "Review records and annotations the bridge passed over, by reason.",
            ),
            &["reason"],
        )?;
        let api_errors = IntCounterVec::new(
            opts(
                "label_studio_api_errors_total",
                "Failed Label Studio API calls, by kind (unreachable, timeout, unauthorized, \
                 status, decode); the bridge retries.",
            ),
            &["kind"],
        )?;
        let webhook_refused = IntCounterVec::new(
            opts(
                "label_studio_webhook_refused_total",
                "Webhook calls the bridge refused, by reason (secret, invalid, not_found).",
            ),
            &["reason"],
        )?;
        let publish_failures = IntCounter::with_opts(opts(
            "label_studio_publish_failures_total",
            "Answers the broker did not acknowledge; the catch-up publishes them later.",
        ))?;
        let registry = metrics.registry();
        registry.register(Box::new(tasks_imported.clone()))?;
        registry.register(Box::new(answers_published.clone()))?;
        registry.register(Box::new(skipped.clone()))?;
        registry.register(Box::new(api_errors.clone()))?;
        registry.register(Box::new(webhook_refused.clone()))?;
        registry.register(Box::new(publish_failures.clone()))?;
        for source in Source::ALL {
            answers_published.with_label_values(&[source.as_str()]);
        }
        for skip in Skip::ALL {
            skipped.with_label_values(&[skip.as_str()]);
        }
        for kind in ApiErrorKind::ALL {
            api_errors.with_label_values(&[kind.as_str()]);
        }
        for reason in Refused::ALL {
            webhook_refused.with_label_values(&[reason.as_str()]);
        }
        Ok(BridgeMetrics {
            tasks_imported,
            answers_published,
            skipped,
            api_errors,
            webhook_refused,
            publish_failures,
        })
    }

    pub fn imported(&self, tasks: u64) {
        self.tasks_imported.inc_by(tasks);
    }

    pub fn published(&self, source: Source) {
        self.answers_published
            .with_label_values(&[source.as_str()])
            .inc();
    }

    pub fn skipped(&self, skip: Skip) {
        self.skipped.with_label_values(&[skip.as_str()]).inc();
    }

    pub fn api_error(&self, kind: ApiErrorKind) {
        self.api_errors.with_label_values(&[kind.as_str()]).inc();
    }

    pub fn refused(&self, reason: Refused) {
        self.webhook_refused
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn publish_failed(&self) {
        self.publish_failures.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_labelled_series_exists_at_zero() {
        let metrics = Metrics::new();
        let bridge = BridgeMetrics::register(&metrics).unwrap();
        bridge.published(Source::CatchUp);
        let text = metrics.render();
        for line in [
            "reviewloop_label_studio_tasks_imported_total 0",
            "reviewloop_label_studio_answers_published_total{source=\"webhook\"} 0",
            "reviewloop_label_studio_answers_published_total{source=\"catch_up\"} 1",
            "reviewloop_label_studio_skipped_total{reason=\"already_imported\"} 0",
            "reviewloop_label_studio_skipped_total{reason=\"updated\"} 0",
            "reviewloop_label_studio_api_errors_total{kind=\"unreachable\"} 0",
            "reviewloop_label_studio_webhook_refused_total{reason=\"secret\"} 0",
            "reviewloop_label_studio_publish_failures_total 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
