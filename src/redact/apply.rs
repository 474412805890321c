//! Applying a compiled [`Redactor`](super::Redactor) to the bodies of a record: field rules
//! first, then the detectors over every string left, failing closed where a rule cannot be
//! applied. Pure: no I/O, no clock.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Range;

use hmac::{Hmac, KeyInit, Mac};
use regex::Regex;
use serde_json::Value;
use sha2::Sha256;

use super::config::{FieldAction, PatternAction};
use super::detect::Builtin;
use super::path::{Body, Fate, FieldPath, Hits, visit};
use crate::record::{DropReason, Dropped, DroppedScope, Encoding, Payload, Redaction};

/// What a masked field becomes.
pub const MASKED: &str = "[masked]";
/// What a string becomes when replacing matches keeps making new ones.
pub const UNSETTLED: &str = "[redacted]";
/// Sweeps of every detector over one string before it is given up as unsettled: one sweep
/// settles any text with the built-in detectors alone; a second catches a match that a
/// replacement completed.
const MAX_SWEEPS: usize = 3;

/// The HMAC-SHA256 key for `hash`. Never printed: `Debug` shows no byte of it.
#[derive(Clone)]
pub struct HashKey(Hmac<Sha256>);

impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HashKey(<redacted>)")
    }
}

impl HashKey {
    /// Keys shorter than this are refused (a guessable key makes tokens reversible by trying
    /// likely values).
    pub const MIN_BYTES: usize = 16;

    pub fn new(key: &[u8]) -> HashKey {
        HashKey(Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length"))
    }

    /// `hmac:` and the first 8 bytes of HMAC-SHA256(key, bytes), each nibble written as a
    /// letter `a`..`p` (a hex digit shifted to letters, so no token ever looks like a number,
    /// a card or a phone to a detector).
    pub fn token(&self, bytes: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(bytes);
        let digest = mac.finalize().into_bytes();
        let mut token = String::with_capacity(5 + 16);
        token.push_str("hmac:");
        for byte in &digest[..8] {
            token.push(char::from(b'a' + (byte >> 4)));
            token.push(char::from(b'a' + (byte & 0x0f)));
        }
        token
    }
}

#[derive(Debug)]
pub struct Field {
    /// As configured: the rule's name in the record.
    pub text: String,
    pub path: FieldPath,
    pub action: FieldAction,
}

#[derive(Debug)]
pub enum Detect {
    Builtin(Builtin),
    Custom(Regex),
}

#[derive(Debug)]
pub struct Detector {
    /// The rule's name in the record and the metric: `email`, `custom:<name>`.
    pub label: String,
    pub detect: Detect,
}

impl Detector {
    pub fn find(&self, text: &str) -> Vec<Range<usize>> {
        match &self.detect {
            Detect::Builtin(builtin) => builtin.find(text),
            Detect::Custom(regex) => regex
                .find_iter(text)
                .map(|m| m.range())
                .filter(|r| !r.is_empty())
                .collect(),
        }
    }
}

/// The compiled rules of one route.
#[derive(Debug, Default)]
pub struct Rules {
    pub fields: Vec<Field>,
    pub detectors: Vec<Detector>,
    pub pattern_action: PatternAction,
    /// Present whenever a rule hashes (checked at start).
    pub key: Option<HashKey>,
}

/// The report being built for one record.
#[derive(Default)]
struct Report {
    rules: BTreeMap<String, u64>,
    dropped: BTreeMap<(&'static str, String, DroppedScope, DropReason), u64>,
}

impl Report {
    fn fired(&mut self, rule: &str, n: u64) {
        if n > 0 {
            *self.rules.entry(rule.to_owned()).or_default() += n;
        }
    }

    fn dropped(&mut self, body: &'static str, rule: &str, scope: DroppedScope, why: DropReason) {
        *self
            .dropped
            .entry((body, rule.to_owned(), scope, why))
            .or_default() += 1;
    }

    fn finish(self) -> Redaction {
        Redaction {
            rules: self.rules,
            dropped: self
                .dropped
                .into_iter()
                .map(|((body, rule, scope, why), count)| Dropped {
                    body: body.to_owned(),
                    rule,
                    scope,
                    why,
                    count,
                })
                .collect(),
        }
    }
}

impl Rules {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.detectors.is_empty()
    }

    /// Redacts both bodies in place and says what was done.
    pub fn apply(&self, request: &mut Payload, response: &mut Payload) -> Redaction {
        let mut report = Report::default();
        self.apply_to(Body::Request, request, &mut report);
        self.apply_to(Body::Response, response, &mut report);
        report.finish()
    }

    fn apply_to(&self, body: Body, payload: &mut Payload, report: &mut Report) {
        let name = match body {
            Body::Request => "request",
            Body::Response => "response",
        };
        let mut fields = self.fields.iter().filter(|f| f.path.body == body).peekable();
        if let Some(first) = fields.peek()
            && payload.encoding != Encoding::Json
        {
            report.dropped(name, &first.text, DroppedScope::Body, DropReason::NotJson);
            drop_body(payload);
            return;
        }
        for field in fields {
            let mut hits = Hits::default();
            let fate = visit(
                &mut payload.body,
                &field.path.steps,
                &mut |value| self.act(field.action, value),
                &mut hits,
            );
            report.fired(&field.text, hits.applied);
            let scope = if fate == Fate::Drop {
                drop_body(payload);
                if hits.failed == 0 {
                    return; // `drop` of the whole body, as configured
                }
                DroppedScope::Body
            } else {
                DroppedScope::Value
            };
            for _ in 0..hits.failed {
                report.dropped(name, &field.text, scope, DropReason::PathMismatch);
            }
            if scope == DroppedScope::Body {
                return;
            }
        }
        if self.detectors.is_empty() {
            return;
        }
        let mut failed = 0;
        match (payload.encoding, &mut payload.body) {
            (Encoding::Json, value) => self.redact_value(value, report, &mut failed),
            (Encoding::Utf8, Value::String(text)) => {
                if let Some(redacted) = self.redact_text(text, report, &mut failed) {
                    *text = redacted;
                }
            }
            _ => {
                report.dropped(name, "patterns", DroppedScope::Body, DropReason::NotText);
                drop_body(payload);
                return;
            }
        }
        for _ in 0..failed {
            report.dropped(name, "patterns", DroppedScope::Value, DropReason::Unsettled);
        }
    }

    fn act(&self, action: FieldAction, value: &mut Value) -> Fate {
        match action {
            FieldAction::Drop => return Fate::Drop,
            FieldAction::Mask => *value = Value::String(MASKED.to_owned()),
            FieldAction::Hash => {
                let key = self.key.as_ref().expect("a key is checked at start when hashing");
                let token = match &*value {
                    Value::String(text) => key.token(text.as_bytes()),
                    other => key.token(&canonical_json(other)),
                };
                *value = Value::String(token);
            }
        }
        Fate::Keep
    }

    /// Every string, object key and integer in `value`.
    fn redact_value(&self, value: &mut Value, report: &mut Report, failed: &mut u64) {
        match value {
            Value::String(text) => {
                if let Some(redacted) = self.redact_text(text, report, failed) {
                    *text = redacted;
                }
            }
            // A card or an account number sent as a JSON number is still one.
            Value::Number(number) if number.is_i64() || number.is_u64() => {
                let text = number.to_string();
                if let Some(redacted) = self.redact_text(&text, report, failed) {
                    *value = Value::String(redacted);
                }
            }
            Value::Array(items) => {
                for item in items {
                    self.redact_value(item, report, failed);
                }
            }
            Value::Object(map) => {
                let renamed: Vec<(String, String)> = map
                    .keys()
                    .filter_map(|key| {
                        let redacted = self.redact_text(key, report, failed)?;
                        Some((key.clone(), redacted))
                    })
                    .collect();
                for (old, new) in renamed {
                    if let Some(child) = map.remove(&old) {
                        map.insert(new, child);
                    }
                }
                for child in map.values_mut() {
                    self.redact_value(child, report, failed);
                }
            }
            _ => {}
        }
    }

    /// The text with every detector's matches replaced, or `None` when nothing matched.
    /// Replacing repeats until no detector matches: a replacement can complete a new match
    /// (an email's local part glued to a hash token). A text that does not settle within
    /// [`MAX_SWEEPS`] becomes [`UNSETTLED`], counted in `failed`.
    fn redact_text(&self, text: &str, report: &mut Report, failed: &mut u64) -> Option<String> {
        let mut current = Cow::Borrowed(text);
        for _ in 0..MAX_SWEEPS {
            let mut changed = false;
            for detector in &self.detectors {
                let found = detector.find(&current);
                if found.is_empty() {
                    continue;
                }
                changed = true;
                report.fired(&detector.label, found.len() as u64);
                let replaced = self.replace(&current, &found, &detector.label);
                current = Cow::Owned(replaced);
            }
            if !changed {
                return match current {
                    Cow::Borrowed(_) => None,
                    Cow::Owned(text) => Some(text),
                };
            }
        }
        if self.detectors.iter().all(|d| d.find(&current).is_empty()) {
            return Some(current.into_owned());
        }
        *failed += 1;
        Some(UNSETTLED.to_owned())
    }

    fn replace(&self, text: &str, found: &[Range<usize>], label: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for range in found {
            out.push_str(&text[at..range.start]);
            match (self.pattern_action, &self.key) {
                (PatternAction::Hash, Some(key)) => {
                    out.push_str(&key.token(text[range.clone()].as_bytes()))
                }
                _ => {
                    out.push('[');
                    out.push_str(label);
                    out.push(']');
                }
            }
            at = range.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// A dropped body: `null`, as JSON.
fn drop_body(payload: &mut Payload) {
    payload.encoding = Encoding::Json;
    payload.body = Value::Null;
}

/// Compact JSON with object keys sorted at every level: the bytes a non-string value is
/// hashed from, the same whatever order the client wrote its keys in.
fn canonical_json(value: &Value) -> Vec<u8> {
    fn write(value: &Value, out: &mut Vec<u8>) {
        match value {
            Value::Object(map) => {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_by(|a, b| a.0.cmp(b.0));
                out.push(b'{');
                for (i, (key, child)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend(serde_json::to_vec(key).expect("a string serializes"));
                    out.push(b':');
                    write(child, out);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(item, out);
                }
                out.push(b']');
            }
            scalar => out.extend(serde_json::to_vec(scalar).expect("a scalar serializes")),
        }
    }
    let mut out = Vec::new();
    write(value, &mut out);
    out
}
