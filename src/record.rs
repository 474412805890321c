//! The Kafka records' shapes (review, completed, retraining, dead-letter) — the contract whose
//! JSON Schemas are in `schemas/` and whose fields the README documents — and how captured
//! bodies are encoded into them (`json`, `utf8` or `base64`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Why a response was sent to review. A record lists every reason that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    LowConfidence,
    Sampled,
    Forced,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LowConfidence => "low_confidence",
            Reason::Sampled => "sampled",
            Reason::Forced => "forced",
        }
    }
}

/// How `body` holds the captured bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// `body` is the JSON value itself.
    Json,
    /// `body` is a string.
    Utf8,
    /// `body` is a base64 string of arbitrary bytes.
    Base64,
}

/// A request or response body as carried in records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub content_type: Option<String>,
    pub encoding: Encoding,
    pub body: Value,
}

impl Payload {
    /// The non-blank string leaves of a JSON body with their paths (`inputs`,
    /// `messages[1].content`), at most `max`: what a person reads of a JSON input. None for a
    /// body that is not JSON.
    pub fn text_fields(&self, max: usize) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        if self.encoding == Encoding::Json {
            collect_text_fields(&self.body, String::new(), max, &mut fields);
        }
        fields
    }
}

fn collect_text_fields(value: &Value, path: String, max: usize, out: &mut Vec<(String, String)>) {
    if out.len() >= max {
        return;
    }
    match value {
        Value::String(text) if !text.trim().is_empty() => out.push((path, text.clone())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_text_fields(item, format!("{path}[{i}]"), max, out);
            }
        }
        Value::Object(object) => {
            for (key, item) in object {
                let inner = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                collect_text_fields(item, inner, max, out);
            }
        }
        _ => {}
    }
}

impl Payload {
    /// JSON when the content type says so and the bytes parse; else UTF-8 text; else base64.
    /// A truncated JSON body fails to parse and is kept as text, never silently altered.
    pub fn from_bytes(content_type: Option<&str>, bytes: &[u8]) -> Payload {
        let content_type_owned = content_type.map(str::to_owned);
        if content_type.is_some_and(is_json_content_type)
            && let Ok(value) = serde_json::from_slice::<Value>(bytes)
        {
            return Payload {
                content_type: content_type_owned,
                encoding: Encoding::Json,
                body: value,
            };
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => Payload {
                content_type: content_type_owned,
                encoding: Encoding::Utf8,
                body: Value::String(text.to_owned()),
            },
            Err(_) => Payload {
                content_type: content_type_owned,
                encoding: Encoding::Base64,
                body: Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }

    /// The original bytes back (JSON is re-serialized, so whitespace may differ).
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        match (self.encoding, &self.body) {
            (Encoding::Json, value) => serde_json::to_vec(value).ok(),
            (Encoding::Utf8, Value::String(text)) => Some(text.clone().into_bytes()),
            (Encoding::Base64, Value::String(text)) => {
                base64::engine::general_purpose::STANDARD.decode(text).ok()
            }
            _ => None,
        }
    }
}

/// A captured body as [`Payload::from_bytes`] would carry it, but borrowed from the captured
/// bytes: a JSON body is checked as [`Payload::from_bytes`] checks it (the same numbers, strings
/// and nesting are refused) and then embedded as the bytes it arrived in, never parsed into a
/// `Value` tree and written out again. Serializes to the same fields as [`Payload`].
#[derive(Debug, Serialize)]
pub struct PayloadRef<'a> {
    pub content_type: Option<&'a str>,
    pub encoding: Encoding,
    pub body: BodyRef<'a>,
}

/// The `body` of a [`PayloadRef`].
#[derive(Debug)]
pub enum BodyRef<'a> {
    /// Checked JSON, written as it came (its whitespace and key order kept).
    Json(&'a serde_json::value::RawValue),
    Utf8(&'a str),
    /// Written as a base64 string.
    Base64(&'a [u8]),
}

impl Serialize for BodyRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            BodyRef::Json(raw) => raw.serialize(serializer),
            BodyRef::Utf8(text) => serializer.serialize_str(text),
            BodyRef::Base64(bytes) => serializer.collect_str(&base64::display::Base64Display::new(
                bytes,
                &base64::engine::general_purpose::STANDARD,
            )),
        }
    }
}

impl<'a> PayloadRef<'a> {
    /// The same choice of encoding as [`Payload::from_bytes`], without copying the body.
    #[cfg(test)]
    pub fn from_bytes(content_type: Option<&'a str>, bytes: &'a [u8]) -> PayloadRef<'a> {
        PayloadRef::from_parsed_bytes(content_type, bytes, false)
    }

    /// As [`PayloadRef::from_bytes`]; `is_json` says `bytes` were already parsed whole as one
    /// JSON document by `Value`'s rules (the decision read the response's confidence from
    /// them), so they are not checked again. `false` checks them.
    pub fn from_parsed_bytes(
        content_type: Option<&'a str>,
        bytes: &'a [u8],
        is_json: bool,
    ) -> PayloadRef<'a> {
        let json = content_type.is_some_and(is_json_content_type)
            && (is_json || serde_json::from_slice::<JsonChecked>(bytes).is_ok());
        let body = match json.then(|| serde_json::from_slice(bytes).ok()).flatten() {
            Some(raw) => {
                return PayloadRef {
                    content_type,
                    encoding: Encoding::Json,
                    body: BodyRef::Json(raw),
                };
            }
            None => match std::str::from_utf8(bytes) {
                Ok(text) => BodyRef::Utf8(text),
                Err(_) => BodyRef::Base64(bytes),
            },
        };
        PayloadRef {
            content_type,
            encoding: match body {
                BodyRef::Base64(_) => Encoding::Base64,
                _ => Encoding::Utf8,
            },
            body,
        }
    }
}

/// Accepts exactly the JSON documents `serde_json::from_slice::<Value>` accepts (numbers in
/// range, valid strings, nesting within its limit), building nothing.
struct JsonChecked;

impl<'de> Deserialize<'de> for JsonChecked {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonChecked)
    }
}

impl<'de> serde::de::Visitor<'de> for JsonChecked {
    type Value = JsonChecked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<JsonChecked, E> {
        Ok(JsonChecked)
    }
    fn visit_i64<E>(self, _: i64) -> Result<JsonChecked, E> {
        Ok(JsonChecked)
    }
    fn visit_u64<E>(self, _: u64) -> Result<JsonChecked, E> {
        Ok(JsonChecked)
    }
    fn visit_f64<E>(self, _: f64) -> Result<JsonChecked, E> {
        Ok(JsonChecked)
    }
    fn visit_str<E>(self, _: &str) -> Result<JsonChecked, E> {
        Ok(JsonChecked)
    }
    fn visit_unit<E>(self) -> Result<JsonChecked, E> {
        Ok(JsonChecked)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonChecked, A::Error> {
        while seq.next_element::<JsonChecked>()?.is_some() {}
        Ok(JsonChecked)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonChecked, A::Error> {
        while map.next_entry::<JsonChecked, JsonChecked>()?.is_some() {}
        Ok(JsonChecked)
    }
}

/// A review record written straight from the exchange's captured bytes (bodies as
/// [`PayloadRef`]s): the same JSON fields, in the same order, as [`ReviewRecord`] — what the
/// proxy sends for a route that does not redact, so a diverted body is not parsed twice.
#[derive(Debug, Serialize)]
pub struct ReviewRecordRef<'a> {
    pub id: &'a str,
    pub time: String,
    pub route: &'a str,
    pub request: PayloadRef<'a>,
    pub response: ResponsePayloadRef<'a>,
    pub confidence: Option<f64>,
    pub reasons: &'a [Reason],
    pub sample_percent: f64,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub conditions: &'a [String],
    #[serde(skip_serializing_if = "no_model")]
    pub model: &'a ModelInfo,
    pub truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
}

fn no_model(model: &&ModelInfo) -> bool {
    model.is_empty()
}

/// [`ResponsePayload`] borrowed: the status, then the payload's fields.
#[derive(Debug, Serialize)]
pub struct ResponsePayloadRef<'a> {
    pub status: u16,
    pub content_type: Option<&'a str>,
    pub encoding: Encoding,
    pub body: BodyRef<'a>,
}

impl<'a> ResponsePayloadRef<'a> {
    pub fn new(status: u16, payload: PayloadRef<'a>) -> ResponsePayloadRef<'a> {
        ResponsePayloadRef {
            status,
            content_type: payload.content_type,
            encoding: payload.encoding,
            body: payload.body,
        }
    }
}

/// `application/json`, `application/problem+json`, `application/vnd.x+json; charset=utf-8`…
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json") || essence == "text/json"
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponsePayload {
    pub status: u16,
    #[serde(flatten)]
    pub payload: Payload,
}

/// Which model answered, when the upstream says (SageMaker multi-model / variants).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl ModelInfo {
    pub fn is_empty(&self) -> bool {
        self.target_model.is_none() && self.variant.is_none()
    }
}

/// A record on the review topic (`ce_type = reviewloop.review.requested`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewRecord {
    pub id: String,
    pub time: String,
    pub route: String,
    pub request: Payload,
    pub response: ResponsePayload,
    pub confidence: Option<f64>,
    pub reasons: Vec<Reason>,
    pub sample_percent: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    #[serde(default, skip_serializing_if = "ModelInfo::is_empty")]
    pub model: ModelInfo,
    pub truncated: bool,
    /// The request's W3C `traceparent` (also the `ce_traceparent` header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Present when the route redacts (`[redact]`): what was redacted, never the values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction: Option<Redaction>,
}

/// What `[redact]` did to a record: how many values each rule redacted, and what was dropped
/// because a rule could not be applied. Never a value, and never a path taken from a body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redaction {
    /// Values redacted per rule that fired: a detector (`email`, `custom:<name>`…) or a field
    /// path as configured (`request.customer.email`).
    pub rules: BTreeMap<String, u64>,
    /// Values or whole bodies dropped because a rule could not be applied (fail closed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped: Vec<Dropped>,
}

/// Values or a body dropped for one reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropped {
    /// `request` or `response`.
    pub body: String,
    /// The field path as configured, or `patterns`.
    pub rule: String,
    /// A value inside the body, or the whole body (then `null` in the record).
    pub scope: DroppedScope,
    pub why: DropReason,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DroppedScope {
    Value,
    Body,
}

/// Why a rule could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A field rule names this body, but it is not JSON (another content type, cut short by
    /// `max_inspect_bytes`, or undecodable).
    NotJson,
    /// Detectors apply, but the body is not text (carried as base64).
    NotText,
    /// The path met a value of another kind than it names (a string where it names a member).
    PathMismatch,
    /// Replacing matches kept making new ones (a custom regex matching the replacement).
    Unsettled,
}

impl ReviewRecord {
    /// Cuts the captured bodies until the record serializes to at most `max_bytes`, marking it
    /// `truncated`; returns whether anything was cut. The larger body is cut first, each to a
    /// prefix of its bytes (at a character boundary when it is text); a JSON body cut short no
    /// longer parses and is carried as text, as any cut body. A record whose other fields
    /// alone exceed `max_bytes` keeps empty bodies and stays too large.
    pub fn fit(&mut self, max_bytes: usize) -> bool {
        let mut cut = false;
        // Each round removes at least the overshoot from one body, measured in the body's
        // serialized size, so a few rounds always suffice; the bound is a safety net.
        for _ in 0..16 {
            let size = serialized_len(self);
            if size <= max_bytes {
                break;
            }
            let overshoot = size - max_bytes;
            let request_len = serialized_len(&self.request.body);
            let response_len = serialized_len(&self.response.payload.body);
            let (payload, body_len) = if request_len >= response_len {
                (&mut self.request, request_len)
            } else {
                (&mut self.response.payload, response_len)
            };
            if body_len <= 2 {
                break; // already empty: the rest of the record is too large by itself
            }
            let bytes = payload.to_bytes().unwrap_or_default();
            // Escaping and base64 make the serialized body longer than its bytes: keep the
            // same fraction of the bytes as of the serialized body.
            let keep_fraction = body_len.saturating_sub(overshoot) as f64 / body_len as f64;
            let keep = ((bytes.len() as f64 * keep_fraction) as usize).min(bytes.len() - 1);
            payload.cut_to(&bytes, keep);
            cut = true;
        }
        self.truncated |= cut;
        cut
    }
}

impl Payload {
    /// Replaces the body with the first `keep` of `bytes` (fewer, to end on a character
    /// boundary when they are text).
    fn cut_to(&mut self, bytes: &[u8], keep: usize) {
        let mut keep = keep.min(bytes.len());
        if std::str::from_utf8(bytes).is_ok() {
            while keep > 0 && std::str::from_utf8(&bytes[..keep]).is_err() {
                keep -= 1;
            }
        }
        let prefix = &bytes[..keep];
        let (encoding, body) = match std::str::from_utf8(prefix) {
            Ok(text) => (Encoding::Utf8, Value::String(text.to_owned())),
            Err(_) => (
                Encoding::Base64,
                Value::String(base64::engine::general_purpose::STANDARD.encode(prefix)),
            ),
        };
        self.encoding = encoding;
        self.body = body;
    }
}

fn serialized_len(value: &impl Serialize) -> usize {
    serde_json::to_vec(value).map_or(0, |v| v.len())
}

/// One reviewer's answer as the joiner keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub reviewer: String,
    pub answer: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_spent_seconds: Option<f64>,
}

/// A record on the completed topic in reviewloop's own format
/// (`ce_type = reviewloop.review.completed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletedRecord {
    pub id: String,
    #[serde(flatten)]
    pub answer: Answer,
}

/// A record on the retraining topic (`ce_type = reviewloop.retraining.example`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrainingRecord {
    pub id: String,
    pub time: String,
    pub route: String,
    pub request: Payload,
    pub response: ResponsePayload,
    pub confidence: Option<f64>,
    pub reasons: Vec<Reason>,
    pub label: Value,
    /// `agreeing / answered`, exact.
    pub agreement: f64,
    /// Answers that gave `label`.
    pub agreeing: u32,
    /// Answers consolidated (`join.reviewers_per_item`, one per reviewer).
    pub answered: u32,
    pub answers: Vec<Answer>,
    pub reviewed_at: String,
    #[serde(default, skip_serializing_if = "ModelInfo::is_empty")]
    pub model: ModelInfo,
    /// The `traceparent` of the request the example came from (also `ce_traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The model's answer as compared with `label`: its top label, or its text; `None` when
    /// either could not be read as one.
    #[serde(default)]
    pub model_label: Option<String>,
    /// Whether `label` is the model's answer (normalised); `None` when not comparable.
    #[serde(default)]
    pub model_agreed: Option<bool>,
    /// The review record's `redaction`, carried along with its redacted bodies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redaction: Option<Redaction>,
}

/// Why a record went to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    Invalid,
    Orphan,
    Expired,
    NoAgreement,
}

impl DeadLetterReason {
    pub const ALL: [DeadLetterReason; 4] = [
        DeadLetterReason::Invalid,
        DeadLetterReason::Orphan,
        DeadLetterReason::Expired,
        DeadLetterReason::NoAgreement,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Invalid => "invalid",
            DeadLetterReason::Orphan => "orphan",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::NoAgreement => "no_agreement",
        }
    }
}

/// A record on the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    pub id: Option<String>,
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    /// What went wrong, for a human reading the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub payload: Payload,
}

/// RFC 3339 UTC with milliseconds: `2026-11-22T10:00:00.123Z`.
pub fn rfc3339_millis(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A review record of `request` and `response` (id `r1`, low confidence 0.42) for unit tests.
#[cfg(test)]
pub(crate) fn test_record(request: Payload, response: Payload) -> ReviewRecord {
    ReviewRecord {
        id: "r1".into(),
        time: rfc3339_millis(SystemTime::UNIX_EPOCH),
        route: "/invocations".into(),
        request,
        response: ResponsePayload {
            status: 200,
            payload: response,
        },
        confidence: Some(0.42),
        reasons: vec![Reason::LowConfidence],
        sample_percent: 1.0,
        conditions: vec![],
        model: ModelInfo::default(),
        truncated: false,
        traceparent: None,
        redaction: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record a [`PayloadRef`] writes, read back, is the one [`Payload`] writes.
    fn same_as_payload(content_type: Option<&str>, bytes: &[u8]) {
        let by_value = serde_json::to_value(Payload::from_bytes(content_type, bytes)).unwrap();
        let text = serde_json::to_string(&PayloadRef::from_bytes(content_type, bytes)).unwrap();
        let by_ref: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            by_ref,
            by_value,
            "{content_type:?} {:?}",
            String::from_utf8_lossy(bytes)
        );
    }

    #[test]
    fn borrowed_payloads_write_what_payloads_write_for_every_kind_of_body() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let json = Some("application/json");
        for body in [
            &br#"[[{"label":"joy","score":0.97},{"label":"anger","score":0.01}]]"#[..],
            b" { \"b\" : [1, 2.50, -3e2],\n \"a\": null } ",
            b"1e400",
            br#""\ud800""#,
            br#"{"x": "caf\u00e9"}"#,
            br#"{"cut": [1, 2"#,
            b"",
            b"\xff\xfe not utf-8",
            deep.as_bytes(),
        ] {
            same_as_payload(json, body);
            same_as_payload(Some("text/plain"), body);
            same_as_payload(None, body);
        }
    }

    proptest::proptest! {
        /// Bodies made of JSON's tokens (valid and broken, out-of-range numbers, escapes):
        /// the borrowed payload always writes what the parsed one writes.
        #[test]
        fn borrowed_and_parsed_payloads_agree_on_any_token_soup(
            tokens in proptest::collection::vec(proptest::sample::select(vec![
                "{", "}", "[", "]", ":", ",", " ", "\n", "\"k\"", "\"v\\u00e9\"", "\"\\ud800\"",
                "1", "-0.5", "2e3", "1e400", "12345678901234567890123", "null", "true", "tru",
            ]), 0..24),
        ) {
            let body = tokens.concat();
            same_as_payload(Some("application/json"), body.as_bytes());
        }
    }

    #[test]
    fn a_json_body_is_written_as_it_came() {
        let body = br#"{ "z": 1.50, "a": [ true ] }"#;
        let text =
            serde_json::to_string(&PayloadRef::from_bytes(Some("application/json"), body)).unwrap();
        assert!(
            text.ends_with(r#""body":{ "z": 1.50, "a": [ true ] }}"#),
            "{text}"
        );
    }

    #[test]
    fn bodies_are_encoded_by_what_they_are() {
        let json = Payload::from_bytes(Some("application/json"), br#"{"a":[1,2]}"#);
        assert_eq!(json.encoding, Encoding::Json);
        assert_eq!(json.body["a"][1], 2);

        let text = Payload::from_bytes(Some("text/csv"), b"0.93\n");
        assert_eq!(text.encoding, Encoding::Utf8);
        assert_eq!(text.body, "0.93\n");

        // JSON content type but cut short: kept as text, byte for byte.
        let cut = Payload::from_bytes(Some("application/json"), br#"{"a":[1,"#);
        assert_eq!(cut.encoding, Encoding::Utf8);

        let bytes = [0u8, 159, 146, 150, 255];
        let binary = Payload::from_bytes(Some("application/x-image"), &bytes);
        assert_eq!(binary.encoding, Encoding::Base64);
        assert_eq!(binary.to_bytes().unwrap(), bytes);
    }

    #[test]
    fn review_record_serializes_as_the_contract_says() {
        let record = record(
            Payload::from_bytes(Some("application/json"), b"{\"x\":1}"),
            Payload::from_bytes(Some("application/json"), b"[0.4]"),
        );
        let value = serde_json::to_value(&record).unwrap();
        assert_eq!(value["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["response"]["status"], 200);
        assert_eq!(value["response"]["encoding"], "json");
        assert_eq!(value["reasons"][0], "low_confidence");
        assert!(value.get("model").is_none());
    }

    use super::test_record as record;

    /// A body of `n` bytes of one kind: JSON, text full of characters JSON escapes, multi-byte
    /// text, or binary.
    fn body(kind: u8, n: usize, seed: u8) -> (Option<&'static str>, Vec<u8>) {
        match kind % 4 {
            0 => {
                let text = "y".repeat(n);
                (
                    Some("application/json"),
                    format!(r#"{{"inputs":"{text}"}}"#).into_bytes(),
                )
            }
            1 => (
                Some("text/plain"),
                "\"\n\u{1}".repeat(n / 3 + 1).into_bytes(),
            ),
            2 => (Some("text/plain"), "é漢🙂".repeat(n / 9 + 1).into_bytes()),
            _ => (
                None,
                (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect(),
            ),
        }
    }

    proptest::proptest! {
        /// Any bodies, any limit the rest of the record fits in: the record ends within the
        /// limit, marked truncated when cut, each body a prefix of what it was.
        #[test]
        fn fit_cuts_bodies_to_prefixes_within_the_limit(
            (kind_a, len_a, kind_b, len_b, seed) in (0u8..4, 0usize..20_000, 0u8..4, 0usize..20_000, 0u8..255),
            max in 600usize..30_000,
        ) {
            let (ct_a, a) = body(kind_a, len_a, seed);
            let (ct_b, b) = body(kind_b, len_b, seed);
            let mut fitted = record(Payload::from_bytes(ct_a, &a), Payload::from_bytes(ct_b, &b));
            let before = serde_json::to_vec(&fitted).unwrap().len();
            let cut = fitted.fit(max);
            let after = serde_json::to_vec(&fitted).unwrap().len();
            proptest::prop_assert_eq!(cut, before > max);
            proptest::prop_assert_eq!(fitted.truncated, cut);
            proptest::prop_assert!(after <= max, "{} > {}", after, max);
            let kept_a = fitted.request.to_bytes().unwrap();
            let kept_b = fitted.response.payload.to_bytes().unwrap();
            if cut {
                // A JSON body is compared as the bytes it re-serializes to.
                let a = Payload::from_bytes(ct_a, &a).to_bytes().unwrap();
                let b = Payload::from_bytes(ct_b, &b).to_bytes().unwrap();
                proptest::prop_assert!(a.starts_with(&kept_a));
                proptest::prop_assert!(b.starts_with(&kept_b));
                // Not cut further than needed: the larger body keeps a fair share.
                proptest::prop_assert!(after * 2 >= max.min(before) || kept_a.len() + kept_b.len() == 0,
                    "{} of {} used", after, max);
            } else {
                proptest::prop_assert_eq!(fitted, record(Payload::from_bytes(ct_a, &a), Payload::from_bytes(ct_b, &b)));
            }
        }
    }
}
