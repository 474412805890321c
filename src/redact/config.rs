//! `[redact]`: which values of a review record are dropped, masked or hashed before it leaves
//! the proxy — JSON paths (`fields`), detectors run over every string (`patterns`, `custom`)
//! — and where the hashing key comes from. Per-route overridable like `[review]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedactConfig {
    /// Values at these paths in the request and response bodies.
    pub fields: Vec<FieldRule>,
    /// Built-in detectors run over every string value and every text body.
    pub patterns: Vec<String>,
    /// Named regexes run like the built-in detectors: `{ employee_id = "EMP-[0-9]{6}" }`.
    pub custom: BTreeMap<String, String>,
    /// What a detector's match becomes: `mask` (`[email]`) or `hash` (`hmac:…`).
    pub pattern_action: PatternAction,
    /// A file whose bytes (a trailing newline trimmed) are the HMAC key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key_file: Option<PathBuf>,
    /// The name of an environment variable holding the HMAC key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_key_env: Option<String>,
}

/// One JSON path and what happens to the value found there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// `request.customer.email`, `response.predictions[*].explanation`, `request["first name"]`.
    pub path: String,
    pub action: FieldAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldAction {
    /// Removed from its object (an array element becomes `null`, so indices stay).
    Drop,
    /// Replaced by the string `"[masked]"`.
    Mask,
    /// Replaced by `"hmac:…"`, the same token for the same value and key.
    Hash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatternAction {
    /// The match becomes `[<rule>]`: `[email]`, `[custom:employee_id]`.
    #[default]
    Mask,
    /// The match becomes `hmac:…`.
    Hash,
}

impl RedactConfig {
    /// Whether the configuration uses the HMAC key.
    pub fn uses_hash(&self) -> bool {
        let patterns = !self.patterns.is_empty() || !self.custom.is_empty();
        self.fields.iter().any(|f| f.action == FieldAction::Hash)
            || (patterns && self.pattern_action == PatternAction::Hash)
    }
}
