//! `[join]`: how many answers an item needs, how they are consolidated, and how long the
//! joiner waits for them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Problem, duration, quoted, require, shown};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agreement {
    Majority,
    Unanimous,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinConfig {
    pub group_id: String,
    pub reviewers_per_item: u32,
    pub agreement: Agreement,
    #[serde(with = "duration")]
    pub review_timeout: Duration,
    #[serde(with = "duration")]
    pub orphan_timeout: Duration,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            group_id: "reviewloop-join".into(),
            reviewers_per_item: 1,
            agreement: Agreement::Majority,
            // A2I's default TaskAvailabilityLifetimeInSeconds is 10 days.
            review_timeout: Duration::from_secs(10 * 24 * 3600),
            orphan_timeout: Duration::from_secs(3600),
        }
    }
}

impl JoinConfig {
    /// Every problem with the values, keys relative to `[join]`.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        require(
            &mut problems,
            !self.group_id.trim().is_empty(),
            "group_id",
            quoted(&self.group_id),
            "must not be empty",
        );
        require(
            &mut problems,
            self.reviewers_per_item >= 1,
            "reviewers_per_item",
            self.reviewers_per_item.to_string(),
            "must be at least 1",
        );
        require(
            &mut problems,
            !self.review_timeout.is_zero(),
            "review_timeout",
            shown(self.review_timeout),
            "must be positive",
        );
        require(
            &mut problems,
            !self.orphan_timeout.is_zero(),
            "orphan_timeout",
            shown(self.orphan_timeout),
            "must be positive",
        );
        problems
    }
}

impl Agreement {
    pub fn as_str(self) -> &'static str {
        match self {
            Agreement::Majority => "majority",
            Agreement::Unanimous => "unanimous",
        }
    }
}
