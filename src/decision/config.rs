//! `[review]`: which responses go to review (the simple keys or a conditions file), the
//! sampling key, the budget and the per-request override header.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleBy {
    /// Same record id ⇒ same decision.
    Id,
    /// Same request body ⇒ same decision (A2I's behaviour).
    Input,
}

/// How the audit sample is spread over the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleStrata {
    /// `sample_percent` of every response.
    None,
    /// The same number of audits per predicted label (the model's top label).
    Label,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewConfig {
    pub confidence_below: f64,
    pub sample_percent: f64,
    pub sample_by: SampleBy,
    pub sample_strata: SampleStrata,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions_file: Option<PathBuf>,
    pub budget_per_second: f64,
    /// The share of responses (the least confident) to divert; 0 = off.
    pub target_rate: f64,
    /// How fast the sketch of recent confidences forgets: an observation's weight halves
    /// every `target_half_life`.
    #[serde(with = "duration")]
    pub target_half_life: Duration,
    /// Responses with a confidence a route must have seen before its sketch is used.
    pub target_warmup: u64,
    pub force_header: String,
}

/// Five minutes: long enough that a 5 % quantile rests on hundreds of responses at a few
/// requests per second, short enough to follow a model redeployed during the day.
const fn default_half_life() -> Duration {
    Duration::from_secs(300)
}

/// A thousand responses: the 5 % quantile then rests on about fifty of them.
const fn default_warmup() -> u64 {
    1000
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            confidence_below: 0.7,
            sample_percent: 1.0,
            sample_by: SampleBy::Id,
            sample_strata: SampleStrata::None,
            conditions_file: None,
            budget_per_second: 0.0,
            target_rate: 0.0,
            target_half_life: default_half_life(),
            target_warmup: default_warmup(),
            force_header: "x-review".into(),
        }
    }
}
