//! The review decision: conditions, sampling, budget and the per-request override.
//!
//! Per route, a [`Decider`] holds the compiled confidence extractor, the review rule (the simple
//! `confidence_below`/`sample_percent` keys or a conditions file), the sampling key and a token
//! bucket. Deciding is pure apart from the bucket's state: time is passed in, nothing is read or
//! written, so the proxy's review pipeline counts metrics from the returned [`Decision`].

mod budget;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use crate::conditions::{self, Conditions, Facts};
use crate::confidence::{Document, Extractor};
use crate::config::{ConfidenceConfig, Config, ReviewConfig, SampleBy};
use crate::exchange::Force;
use crate::record::Reason;
use crate::route::DEFAULT_ROUTE;

pub use budget::TokenBucket;

/// Why a configuration's decision settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("cannot read conditions file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "conditions file {} is not valid ({} problem(s)):\n{}",
        file.display(),
        problems.len(),
        problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    Conditions {
        file: PathBuf,
        problems: Vec<conditions::Problem>,
    },
    #[error("{key}: {message}")]
    Confidence { key: String, message: String },
}

/// What the decision needs to know of one exchange.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// `crate::route::Route::index`: [`DEFAULT_ROUTE`] or an index into `config.routes`.
    pub route: usize,
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
}

impl Decision {
    pub fn diverted(&self) -> bool {
        !self.reasons.is_empty() && !self.over_budget
    }
}

/// Decides, per route, which responses go to review. `Send + Sync`: share it behind an `Arc`.
#[derive(Debug)]
pub struct Decider {
    default: RouteDecider,
    routes: Vec<RouteDecider>,
}

#[derive(Debug)]
struct RouteDecider {
    extractor: Extractor,
    rule: Rule,
    sample_by: SampleBy,
    force_header: String,
    /// `None`: unlimited.
    budget: Option<Mutex<TokenBucket>>,
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

impl Decider {
    /// Compiles every route's extractor and conditions (reading each `conditions_file`). An
    /// error names the file and the JSON path of each problem (e.g. `$.Conditions[1].And[0]`).
    pub fn new(config: &Config) -> Result<Decider, DecisionError> {
        let default = RouteDecider::new("", &config.confidence, &config.review)?;
        let routes = config
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| RouteDecider::new(&format!("routes[{i}]."), &r.confidence, &r.review))
            .collect::<Result<_, _>>()?;
        Ok(Decider { default, routes })
    }

    /// Decides for one exchange at `now` (the budget's clock).
    pub fn decide(&self, input: &DecisionInput<'_>, now: Instant) -> Decision {
        let route = self.route(input.route);
        // The document is parsed only when the shape needs it or a condition reads it.
        let quick = match &route.rule {
            Rule::File {
                reads_response: true,
                ..
            } => None,
            _ => route
                .extractor
                .read_quick(input.response_content_type, input.response_body),
        };
        let (confidence, doc) = match quick {
            Some(confidence) => (confidence, None),
            None => {
                let doc = Document::parse(input.response_content_type, input.response_body);
                (route.extractor.read(&doc), Some(doc))
            }
        };
        let sample_percent = route.sample_percent();
        let mut decision = Decision {
            confidence,
            reasons: Vec::new(),
            conditions: Vec::new(),
            sample_percent,
            over_budget: false,
        };
        if input.force == Some(Force::Never) {
            return decision;
        }
        let key = match route.sample_by {
            SampleBy::Id => input.id.as_bytes(),
            SampleBy::Input => input.request_body,
        };
        let point = sample_point(key);
        match &route.rule {
            Rule::Simple {
                confidence_below,
                sample_percent,
            } => {
                if let Some(c) = confidence
                    && c < *confidence_below
                {
                    decision.reasons.push(Reason::LowConfidence);
                    decision.conditions.push(format!(
                        "confidence {c:.4} < confidence_below {confidence_below}"
                    ));
                }
                if point < *sample_percent {
                    let by = match route.sample_by {
                        SampleBy::Id => "id",
                        SampleBy::Input => "input",
                    };
                    decision.reasons.push(Reason::Sampled);
                    decision
                        .conditions
                        .push(format!("sampled: sample_percent {sample_percent} by {by}"));
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
                .push(format!("{}: always", route.force_header));
        }
        decision.reasons.sort_unstable();
        decision.reasons.dedup();
        // Forcing bypasses the budget, and does not spend it.
        if !decision.reasons.is_empty()
            && !forced
            && let Some(budget) = &route.budget
        {
            let mut bucket = budget
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            decision.over_budget = !bucket.try_take(now);
        }
        decision
    }

    fn route(&self, index: usize) -> &RouteDecider {
        if index == DEFAULT_ROUTE {
            &self.default
        } else {
            self.routes.get(index).unwrap_or(&self.default)
        }
    }
}

impl RouteDecider {
    fn new(
        prefix: &str,
        confidence: &ConfidenceConfig,
        review: &ReviewConfig,
    ) -> Result<RouteDecider, DecisionError> {
        let extractor =
            Extractor::new(confidence).map_err(|message| DecisionError::Confidence {
                key: format!("{prefix}confidence.expression"),
                message,
            })?;
        let rule = match &review.conditions_file {
            Some(file) => {
                let text = std::fs::read(file).map_err(|source| DecisionError::Read {
                    file: file.clone(),
                    source,
                })?;
                let conditions =
                    conditions::parse(&text).map_err(|problems| DecisionError::Conditions {
                        file: file.clone(),
                        problems,
                    })?;
                let sample_percent = conditions
                    .sampling_percentages()
                    .into_iter()
                    .fold(0.0, f64::max);
                Rule::File {
                    reads_response: conditions.reads_response(),
                    conditions,
                    sample_percent,
                }
            }
            None => Rule::Simple {
                confidence_below: review.confidence_below,
                sample_percent: review.sample_percent,
            },
        };
        let budget = (review.budget_per_second > 0.0 && review.budget_per_second.is_finite())
            .then(|| Mutex::new(TokenBucket::new(review.budget_per_second)));
        Ok(RouteDecider {
            extractor,
            rule,
            sample_by: review.sample_by,
            force_header: review.force_header.clone(),
            budget,
        })
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
