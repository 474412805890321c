//! `[review]`: which responses go to review (the simple keys or a conditions file), the
//! sampling key, the budget and the per-request override header.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleBy {
    /// Same record id ⇒ same decision.
    Id,
    /// Same request body ⇒ same decision (A2I's behaviour).
    Input,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewConfig {
    pub confidence_below: f64,
    pub sample_percent: f64,
    pub sample_by: SampleBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions_file: Option<PathBuf>,
    pub budget_per_second: f64,
    pub force_header: String,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            confidence_below: 0.7,
            sample_percent: 1.0,
            sample_by: SampleBy::Id,
            conditions_file: None,
            budget_per_second: 0.0,
            force_header: "x-review".into(),
        }
    }
}
