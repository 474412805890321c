//! The review decision of one route: confidence, conditions, sampling, budget and the
//! per-request override, compiled once into a [`Policy`] that the route carries.
//!
//! With the simple keys, a route may also keep a sketch of its recent confidences
//! ([`target`]): `target_rate` diverts that share of the least confident responses,
//! `budget_per_second` keeps the least confident when it binds, and `sample_strata = "label"`
//! spreads the audit evenly over the predicted labels.

mod budget;
mod config;
#[cfg(test)]
mod stream_tests;
mod target;
#[cfg(test)]
mod tests;

use std::sync::Mutex;
use std::time::Instant;

use http::HeaderName;

use crate::conditions::{self, Conditions, Facts};
use crate::confidence::{ConfidenceConfig, Document, Extractor};
use crate::record::Reason;
use crate::prediction;
use crate::settings::{Problem, quoted, shown};

pub use self::budget::TokenBucket;
pub use self::config::{ReviewConfig, SampleBy, SampleStrata};
use self::target::{Adaptive, Live};

/// The per-request override carried by `review.force_header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    Always,
    Never,
}

impl Force {
    /// `always` / `never`, case-insensitive; anything else is ignored.
    pub fn parse(value: &[u8]) -> Option<Force> {
        if value.eq_ignore_ascii_case(b"always") {
            Some(Force::Always)
        } else if value.eq_ignore_ascii_case(b"never") {
            Some(Force::Never)
        } else {
            None
        }
    }
}

/// What the decision needs to know of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// The record id (the sampling key when `sample_by = "id"`).
    pub id: &'a str,
    /// The request body (the sampling key when `sample_by = "input"`).
    pub request_body: &'a [u8],
    pub response_content_type: Option<&'a str>,
    /// The response body, decoded from its content encoding; may be an SSE stream.
    pub response_body: &'a [u8],
    pub force: Option<Force>,
}

/// The outcome for one exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The response's confidence in [0, 1], if it could be read.
    pub confidence: Option<f64>,
    /// Every reason that fired, sorted and unique.
    pub reasons: Vec<Reason>,
    /// Every condition that fired, human readable (for the review record and reviewers).
    pub conditions: Vec<String>,
    /// The audit sampling percentage that applies to this record: `sample_percent`, or with a
    /// conditions file the `RandomSamplingPercentage` of the `Sampling` that fired (else the
    /// file's largest; 0 when it samples nothing). Lets a consumer weight sampled records.
    pub sample_percent: f64,
    /// Reasons fired but the review budget refused the record.
    pub over_budget: bool,
    /// The confidence below which the route diverts right now (the least of
    /// `confidence_below`, the `target_rate` quantile and the budget's), when the route keeps
    /// a sketch (`target_rate`, `budget_per_second` or `sample_strata` set).
    pub threshold: Option<f64>,
    /// Reading the confidence parsed the whole response body as one JSON document, by the
    /// rules `serde_json::from_slice::<Value>` applies (the typed reader, or a
    /// [`Document::Json`]): the review record embeds it without checking it a second time.
    pub response_is_json: bool,
}

impl Decision {
    pub fn diverted(&self) -> bool {
        !self.reasons.is_empty() && !self.over_budget
    }
}

/// One route's review policy, compiled from its `[confidence]` and `[review]` settings: the
/// confidence reader, the rule (the simple keys or a conditions file), the sampling key, the
/// override header and the budget. Deciding is pure apart from the budget's state: time is
/// passed in, nothing is read or written, so the caller counts metrics from the [`Decision`].
/// `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct Policy {
    extractor: Extractor,
    rule: Rule,
    sample_by: SampleBy,
    force_header: HeaderName,
    /// `None`: unlimited.
    budget: Option<Mutex<TokenBucket>>,
    /// The sketch of recent confidences and labels (simple keys only).
    adaptive: Option<Adaptive>,
    target_rate: f64,
}

#[derive(Debug)]
enum Rule {
    Simple {
        confidence_below: f64,
        sample_percent: f64,
    },
    File {
        conditions: Conditions,
        /// The largest `RandomSamplingPercentage` in the file (0 when it samples nothing).
        sample_percent: f64,
        /// Whether a condition reads the response's JSON (Rekognition/Textract checks), so
        /// the document must be parsed.
        reads_response: bool,
    },
}

impl Policy {
    /// Compiles the settings, reading and checking a conditions file. Every problem is
    /// reported, keyed relative to the route (`confidence.expression`,
    /// `review.conditions_file` once per problem of the file, with its JSON path).
    pub fn new(
        confidence: &ConfidenceConfig,
        review: &ReviewConfig,
    ) -> Result<Policy, Vec<Problem>> {
        let mut problems = Vec::new();
        let extractor = Extractor::new(confidence)
            .map_err(|problem| problems.push(problem.under("confidence.")))
            .ok();
        let mut bad = |key: &str, value: String, message: &str| {
            problems.push(Problem::new(format!("review.{key}"), value, message))
        };
        let below = review.confidence_below;
        if !(0.0..=1.0).contains(&below) {
            bad(
                "confidence_below",
                below.to_string(),
                "must be between 0 and 1",
            );
        }
        let sample = review.sample_percent;
        if !(0.0..=100.0).contains(&sample) {
            bad(
                "sample_percent",
                sample.to_string(),
                "must be between 0 and 100",
            );
        }
        let budget = review.budget_per_second;
        if !(budget >= 0.0 && budget.is_finite()) {
            bad(
                "budget_per_second",
                budget.to_string(),
                "must be 0 (unlimited) or a positive rate",
            );
        }
        let target_rate = review.target_rate;
        if !(0.0..1.0).contains(&target_rate) {
            bad(
                "target_rate",
                target_rate.to_string(),
                "must be a share in [0, 1): 0.05 reviews the least confident 5 %; 0 = off",
            );
        }
        if review.target_half_life.is_zero() {
            bad(
                "target_half_life",
                shown(review.target_half_life),
                "must be longer than 0s",
            );
        }
        let by_label = review.sample_strata == SampleStrata::Label;
        if review.conditions_file.is_some() {
            if target_rate > 0.0 {
                bad(
                    "target_rate",
                    target_rate.to_string(),
                    "only with the simple keys, not with conditions_file",
                );
            }
            if by_label {
                bad(
                    "sample_strata",
                    quoted("label"),
                    "only with the simple keys, not with conditions_file",
                );
            }
        }
        let force_header = HeaderName::from_bytes(review.force_header.as_bytes())
            .map_err(|_| {
                bad(
                    "force_header",
                    quoted(&review.force_header),
                    "not a valid HTTP header name",
                )
            })
            .ok();
        let rule = match &review.conditions_file {
            None => Some(Rule::Simple {
                confidence_below: below,
                sample_percent: sample,
            }),
            Some(path) => {
                let shown = quoted(&path.display().to_string());
                match std::fs::read(path) {
                    Err(_) if !path.is_file() => {
                        bad("conditions_file", shown, "no such file");
                        None
                    }
                    Err(e) => {
                        bad("conditions_file", shown, &format!("cannot read: {e}"));
                        None
                    }
                    // Each problem of the file, by its JSON path (`$.Conditions[1].And[0]: …`).
                    Ok(text) => match conditions::parse(&text) {
                        Ok(conditions) => Some(Rule::File {
                            sample_percent: conditions
                                .sampling_percentages()
                                .into_iter()
                                .fold(0.0, f64::max),
                            reads_response: conditions.reads_response(),
                            conditions,
                        }),
                        Err(file_problems) => {
                            for problem in file_problems {
                                bad("conditions_file", shown.clone(), &problem.to_string());
                            }
                            None
                        }
                    },
                }
            }
        };
        match (extractor, rule, force_header) {
            (Some(extractor), Some(rule), Some(force_header)) if problems.is_empty() => {
                let adaptive = (matches!(rule, Rule::Simple { .. })
                    && (target_rate > 0.0 || budget > 0.0 || by_label))
                    .then(|| {
                        Adaptive::new(
                            (target_rate > 0.0).then_some(target_rate),
                            (budget > 0.0).then_some(budget),
                            sample,
                            by_label,
                            review.target_half_life.as_secs_f64(),
                            review.target_warmup,
                        )
                    });
                Ok(Policy {
                    extractor,
                    rule,
                    sample_by: review.sample_by,
                    force_header,
                    budget: (budget > 0.0).then(|| Mutex::new(TokenBucket::new(budget))),
                    adaptive,
                    target_rate,
                })
            }
            _ => Err(problems),
        }
    }

    /// The request header that overrides this route's decision (`review.force_header`).
    pub fn force_header(&self) -> &HeaderName {
        &self.force_header
    }

    /// Decides for one exchange at `now` (the budget's clock).
    pub fn decide(&self, input: &DecisionInput<'_>, now: Instant) -> Decision {
        // The document is parsed only when the shape needs it, a condition reads it or the
        // audit is stratified by the predicted label.
        let by_label = self.adaptive.as_ref().is_some_and(Adaptive::by_label);
        let quick = match &self.rule {
            Rule::File {
                reads_response: true,
                ..
            } => None,
            _ if by_label => None,
            _ => self
                .extractor
                .read_quick(input.response_content_type, input.response_body),
        };
        let (confidence, doc) = match quick {
            Some(confidence) => (confidence, None),
            None => {
                let doc = Document::parse(input.response_content_type, input.response_body);
                (self.extractor.read(&doc), Some(doc))
            }
        };
        // The typed reader answers only for a body it parsed whole.
        let response_is_json = doc.as_ref().map_or(quick.is_some(), |d| d.json().is_some());
        let mut decision = Decision {
            confidence,
            reasons: Vec::new(),
            conditions: Vec::new(),
            sample_percent: self.sample_percent(),
            over_budget: false,
            threshold: None,
            response_is_json,
        };
        // Every response counts in the sketch, whatever is decided for it.
        let label = by_label
            .then(|| doc.as_ref().and_then(Document::json).and_then(prediction::top_label))
            .flatten();
        let live = self
            .adaptive
            .as_ref()
            .map(|adaptive| adaptive.observe(confidence, label.as_deref(), now));
        if input.force == Some(Force::Never) {
            return decision;
        }
        let key = match self.sample_by {
            SampleBy::Id => input.id.as_bytes(),
            SampleBy::Input => input.request_body,
        };
        let point = sample_point(key);
        match &self.rule {
            Rule::Simple {
                confidence_below,
                sample_percent,
            } => {
                // `confidence_below` is the ceiling the target rate never exceeds.
                let target = live.and_then(|l| l.target);
                let review_below = target.map_or(*confidence_below, |t| t.min(*confidence_below));
                decision.threshold =
                    live.map(|l| l.budget.map_or(review_below, |b| b.min(review_below)));
                if let Some(c) = confidence
                    && c < review_below
                {
                    decision.reasons.push(Reason::LowConfidence);
                    decision.conditions.push(match target {
                        Some(t) if t < *confidence_below => format!(
                            "confidence {c:.4} < {t:.4}, the target_rate {} quantile",
                            self.target_rate
                        ),
                        _ => format!("confidence {c:.4} < confidence_below {confidence_below}"),
                    });
                }
                let percent = live
                    .and_then(|l| l.label_percent)
                    .unwrap_or(*sample_percent);
                decision.sample_percent = percent;
                if point < percent {
                    let by = match self.sample_by {
                        SampleBy::Id => "id",
                        SampleBy::Input => "input",
                    };
                    decision.reasons.push(Reason::Sampled);
                    decision.conditions.push(match &label {
                        Some(label) if by_label => format!(
                            "sampled: sample_percent {sample_percent} by {by}, stratified by \
                             label: {percent:.4} % for {label:?}"
                        ),
                        _ => format!("sampled: sample_percent {sample_percent} by {by}"),
                    });
                }
            }
            Rule::File { conditions, .. } => {
                let facts = Facts {
                    confidence,
                    response: doc.as_ref().and_then(Document::json),
                    sample_point: point,
                };
                let fired = conditions.evaluate(&facts);
                if let Some(percent) = fired.iter().filter_map(|f| f.sampling).reduce(f64::max) {
                    decision.sample_percent = percent;
                }
                for f in fired {
                    decision.reasons.push(f.reason);
                    decision.conditions.push(f.description);
                }
            }
        }
        let forced = input.force == Some(Force::Always);
        if forced {
            decision.reasons.push(Reason::Forced);
            decision
                .conditions
                .push(format!("{}: always", self.force_header));
        }
        decision.reasons.sort_unstable();
        decision.reasons.dedup();
        // Forcing bypasses the budget, and does not spend it. A response diverted for its low
        // confidence alone at or above the budget's threshold is over budget without spending
        // a token: the budget goes to the least confident.
        let above_budget = |live: Live| {
            decision.reasons == [Reason::LowConfidence]
                && live
                    .budget
                    .zip(confidence)
                    .is_some_and(|(threshold, c)| c >= threshold)
        };
        if !decision.reasons.is_empty() && !forced && live.is_some_and(above_budget) {
            decision.over_budget = true;
        } else if !decision.reasons.is_empty()
            && !forced
            && let Some(budget) = &self.budget
        {
            let mut bucket = budget
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            decision.over_budget = !bucket.try_take(now);
        }
        decision
    }

    fn sample_percent(&self) -> f64 {
        match &self.rule {
            Rule::Simple { sample_percent, .. } | Rule::File { sample_percent, .. } => {
                *sample_percent
            }
        }
    }
}

/// Fixed so that every process, on every machine, samples the same keys.
const SAMPLING_SEED: u64 = 0x7265_7669_6577_6c70; // "reviewlp"

/// Where `key` falls in [0, 100): a record is sampled at `p` % when this is below `p`. A stable
/// hash (xxh3, fixed seed) makes the same key land at the same point in every process.
pub fn sample_point(key: &[u8]) -> f64 {
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(key, SAMPLING_SEED);
    // The top 53 bits, as a fraction in [0, 1) with full f64 precision.
    (hash >> 11) as f64 * (1.0 / (1u64 << 53) as f64) * 100.0
}
