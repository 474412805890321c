//! `[redact]`: removing personal data from review records before they leave the proxy.
//!
//! Each route compiles its `[redact]` settings into a [`Redactor`] at start (paths parsed,
//! regexes compiled, the HMAC key read), so a bad setting is reported with the rest of the
//! configuration. The review pipeline applies it once to the record it built — the bytes
//! forwarded to the model, the client's response and the review decision never see it — and
//! counts what it did with [`RedactionMetrics`]. A rule that cannot be applied drops what it
//! could not redact (fail closed) and says so in the record.

mod apply;
mod config;
mod detect;
mod path;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::Path;

use prometheus::IntCounterVec;
use regex::Regex;

use crate::metrics::Metrics;
use crate::record::{Redaction, ReviewRecord};
use crate::settings::{Problem, quoted};

pub use self::apply::HashKey;
pub use self::config::{FieldAction, FieldRule, PatternAction, RedactConfig};
pub use self::detect::Builtin;
use self::apply::{Detect, Detector, Field, Rules};
use self::path::FieldPath;

/// The metric label of every field rule (paths are not a bounded label set).
pub const FIELD_LABEL: &str = "field";
/// The metric label of values and bodies dropped because a rule could not be applied.
pub const FAIL_CLOSED_LABEL: &str = "fail_closed";

/// One route's compiled `[redact]` settings.
#[derive(Debug, Default)]
pub struct Redactor {
    rules: Rules,
}

impl Redactor {
    /// Compiles the settings, reading the HMAC key. Every problem is reported, keyed
    /// `redact.…` relative to the route.
    pub fn new(config: &RedactConfig) -> Result<Redactor, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut bad = |key: String, value: String, message: String| {
            problems.push(Problem::new(format!("redact.{key}"), value, message))
        };
        let mut fields = Vec::new();
        for (i, rule) in config.fields.iter().enumerate() {
            match FieldPath::parse(&rule.path) {
                Ok(path) => fields.push(Field {
                    text: rule.path.clone(),
                    path,
                    action: rule.action,
                }),
                Err(message) => bad(format!("fields[{i}].path"), quoted(&rule.path), message),
            }
        }
        let mut detectors = Vec::new();
        let mut seen = BTreeSet::new();
        for name in &config.patterns {
            match Builtin::parse(name) {
                Some(builtin) if seen.insert(builtin) => {}
                Some(_) => bad(
                    "patterns".into(),
                    quoted(name),
                    "is listed twice".into(),
                ),
                None => bad(
                    "patterns".into(),
                    quoted(name),
                    format!(
                        "unknown detector; the built-in ones are {} (regexes go in redact.custom)",
                        Builtin::ALL.map(Builtin::as_str).join(", ")
                    ),
                ),
            }
        }
        // The built-in detectors run in their own order (see `Builtin`), custom ones after.
        detectors.extend(seen.into_iter().map(|builtin| Detector {
            label: builtin.as_str().to_owned(),
            detect: Detect::Builtin(builtin),
        }));
        for (name, pattern) in &config.custom {
            let key = format!("custom.{name}");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bad(key, quoted(pattern), "a custom detector's name is made of [A-Za-z0-9_] (it is a metric label)".into());
                continue;
            }
            match Regex::new(pattern) {
                Ok(regex) if regex.is_match("") => {
                    bad(key, quoted(pattern), "matches the empty string".into())
                }
                Ok(regex) => detectors.push(Detector {
                    label: format!("custom:{name}"),
                    detect: Detect::Custom(regex),
                }),
                Err(e) => bad(key, quoted(pattern), format!("is not a regex: {e}")),
            }
        }
        let key = read_key(config);
        if let Err(problem) = &key {
            problems.push(problem.clone().under("redact."));
        }
        let key = key.ok().flatten();
        let key_unreadable = problems.iter().any(|p| p.key.starts_with("redact.hash_key"));
        if config.uses_hash() && key.is_none() && !key_unreadable {
            problems.push(Problem::about(
                "redact.hash_key_file",
                "a rule hashes (action or pattern_action = \"hash\"): set hash_key_file or \
                 hash_key_env to the HMAC key",
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Redactor {
            rules: Rules {
                fields,
                detectors,
                pattern_action: config.pattern_action,
                key,
            },
        })
    }

    /// Whether any rule is configured (else records carry no `redaction`).
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The metric labels this redactor can count (besides `fail_closed`).
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        let field = (!self.rules.fields.is_empty()).then_some(FIELD_LABEL);
        field
            .into_iter()
            .chain(self.rules.detectors.iter().map(|d| d.label.as_str()))
    }

    /// Redacts the record's bodies in place and notes it in `record.redaction`.
    pub fn apply(&self, record: &mut ReviewRecord) {
        if !self.is_active() {
            return;
        }
        let redaction = self
            .rules
            .apply(&mut record.request, &mut record.response.payload);
        record.redaction = Some(redaction);
    }
}

/// The HMAC key from `hash_key_file` or `hash_key_env`, if either is set. The problem never
/// shows the key.
fn read_key(config: &RedactConfig) -> Result<Option<HashKey>, Problem> {
    let bytes = match (&config.hash_key_file, &config.hash_key_env) {
        (Some(_), Some(env)) => {
            return Err(Problem::new(
                "hash_key_env",
                quoted(env),
                "set hash_key_file or hash_key_env, not both",
            ));
        }
        (Some(file), None) => read_key_file(file)?,
        (None, Some(env)) => match std::env::var_os(env) {
            Some(value) => value.into_encoded_bytes(),
            None => {
                return Err(Problem::new(
                    "hash_key_env",
                    quoted(env),
                    "this environment variable is not set",
                ));
            }
        },
        (None, None) => return Ok(None),
    };
    if bytes.len() < HashKey::MIN_BYTES {
        let key = if config.hash_key_file.is_some() {
            "hash_key_file"
        } else {
            "hash_key_env"
        };
        return Err(Problem::about(
            key,
            format!(
                "the HMAC key has {} bytes; use at least {} random bytes",
                bytes.len(),
                HashKey::MIN_BYTES
            ),
        ));
    }
    Ok(Some(HashKey::new(&bytes)))
}

fn read_key_file(file: &Path) -> Result<Vec<u8>, Problem> {
    let mut bytes = std::fs::read(file).map_err(|e| {
        Problem::new(
            "hash_key_file",
            quoted(&file.display().to_string()),
            format!("cannot read the key: {e}"),
        )
    })?;
    // An editor's or `echo`'s trailing newline is not part of the key.
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    Ok(bytes)
}

/// `reviewloop_redactions_total{rule}`: values redacted by rule, and values or bodies dropped
/// because a rule could not be applied (`fail_closed`). Labels are the built-in detectors,
/// `field`, `fail_closed` and the configured `custom:<name>`s: bounded by the configuration.
#[derive(Clone)]
pub struct RedactionMetrics {
    total: IntCounterVec,
}

impl RedactionMetrics {
    /// Registers the metric with every label `redactors` can count at 0.
    pub fn register<'a>(
        metrics: &Metrics,
        redactors: impl IntoIterator<Item = &'a Redactor>,
    ) -> RedactionMetrics {
        let total = IntCounterVec::new(
            prometheus::Opts::new(
                "redactions_total",
                "Values redacted from review records, by rule; fail_closed counts values and \
                 bodies dropped because a rule could not be applied.",
            )
            .namespace("reviewloop"),
            &["rule"],
        )
        .expect("valid metric");
        metrics
            .registry()
            .register(Box::new(total.clone()))
            .expect("registered once");
        let builtin = Builtin::ALL.map(Builtin::as_str);
        for label in builtin.into_iter().chain([FIELD_LABEL, FAIL_CLOSED_LABEL]) {
            total.with_label_values(&[label]);
        }
        for redactor in redactors {
            for label in redactor.labels() {
                total.with_label_values(&[label]);
            }
        }
        RedactionMetrics { total }
    }

    /// Counts what one record's redaction did.
    pub fn count(&self, redaction: &Redaction) {
        for (rule, n) in &redaction.rules {
            let label = if rule.starts_with("request") || rule.starts_with("response") {
                FIELD_LABEL
            } else {
                rule.as_str()
            };
            self.total.with_label_values(&[label]).inc_by(*n);
        }
        let dropped: u64 = redaction.dropped.iter().map(|d| d.count).sum();
        if dropped > 0 {
            self.total
                .with_label_values(&[FAIL_CLOSED_LABEL])
                .inc_by(dropped);
        }
    }
}
