//! The Kafka records' shapes (review, completed, retraining, dead-letter) as DESIGN.md fixes
//! them, and how captured bodies are encoded into them (`json`, `utf8` or `base64`).

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
    pub agreement: f64,
    pub answers: Vec<Answer>,
    pub reviewed_at: String,
    #[serde(default, skip_serializing_if = "ModelInfo::is_empty")]
    pub model: ModelInfo,
}

/// Why a record went to the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadLetterReason {
    Invalid,
    Orphan,
    Expired,
    NoAgreement,
}

impl DeadLetterReason {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let record = ReviewRecord {
            id: "r1".into(),
            time: rfc3339_millis(SystemTime::UNIX_EPOCH),
            route: "/invocations".into(),
            request: Payload::from_bytes(Some("application/json"), b"{\"x\":1}"),
            response: ResponsePayload {
                status: 200,
                payload: Payload::from_bytes(Some("application/json"), b"[0.4]"),
            },
            confidence: Some(0.42),
            reasons: vec![Reason::LowConfidence],
            sample_percent: 1.0,
            conditions: vec![],
            model: ModelInfo::default(),
            truncated: false,
        };
        let value = serde_json::to_value(&record).unwrap();
        assert_eq!(value["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(value["response"]["status"], 200);
        assert_eq!(value["response"]["encoding"], "json");
        assert_eq!(value["reasons"][0], "low_confidence");
        assert!(value.get("model").is_none());
    }
}
