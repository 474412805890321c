//! The model's answer against the reviewers' consolidated one (pure): what the model said
//! (`model_label`), whether the reviewers agreed (`model_agreed`), and the metric updates that
//! turn these into the model's accuracy and a reliability diagram.
//!
//! A classifier's answer is its top-scored named label, compared with the reviewers' label
//! (`"cat"` or `{"label": "cat"}`); any other model's answer is its text, compared with the
//! reviewers' text (`"…"`, `{"text": "…"}` or `{"answer": "…"}`). Both sides are normalised
//! first: trimmed, inner whitespace collapsed to one space, lower-cased. When either side has no
//! such answer (an unnamed probability vector, a JSON answer with other fields), nothing is
//! claimed: both fields are null and nothing is counted.

use serde_json::Value;

use crate::metrics::confidence_bucket;
use crate::prediction::{self, ModelAnswer};
use crate::record::{Payload, Reason};

/// The comparison of one retraining record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Judged {
    pub model_label: Option<String>,
    /// `None`: the model's or the reviewers' answer could not be read as a label or text.
    pub agreed: Option<bool>,
}

/// Compares the model's answer in `response` with the consolidated `label`.
pub(crate) fn judge(response: &Payload, label: &Value) -> Judged {
    let model = prediction::model_answer(response);
    let human = match &model {
        Some(ModelAnswer::Label(_)) => reviewers_text(label, &["label"]),
        Some(ModelAnswer::Text(_)) => reviewers_text(label, &["text", "answer", "label"]),
        None => None,
    };
    let agreed = model
        .as_ref()
        .zip(human)
        .map(|(model, human)| normalise(model.as_str()) == normalise(&human));
    Judged {
        model_label: model.filter(|_| agreed.is_some()).map(|m| match m {
            ModelAnswer::Label(s) | ModelAnswer::Text(s) => s,
        }),
        agreed,
    }
}

/// The reviewers' answer as text: a string or number itself, or the first of `keys` in an
/// object that holds one.
fn reviewers_text(label: &Value, keys: &[&str]) -> Option<String> {
    match label {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) => keys
            .iter()
            .find_map(|key| o.get(*key))
            .filter(|v| !v.is_object() && !v.is_array())
            .and_then(|v| reviewers_text(v, keys)),
        Value::Null | Value::Array(_) => None,
    }
}

fn normalise(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The metric updates of one judged record: one agreement count per reason, one calibration
/// count by the record's confidence (when it had one).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgreementCount {
    pub route: String,
    pub reasons: Vec<Reason>,
    /// The confidence's tenth ("0.0".."0.9").
    pub bucket: Option<&'static str>,
    pub agreed: bool,
}

impl AgreementCount {
    pub fn new(route: &str, reasons: &[Reason], confidence: Option<f64>, agreed: bool) -> Self {
        AgreementCount {
            route: route.to_owned(),
            reasons: reasons.to_vec(),
            bucket: confidence.map(confidence_bucket),
            agreed,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn response(body: &str) -> Payload {
        Payload::from_bytes(Some("application/json"), body.as_bytes())
    }

    #[test]
    fn a_classifiers_top_label_against_the_reviewers_label() {
        let model = response(r#"[{"label":"cat","score":0.3},{"label":"Dog","score":0.7}]"#);
        let agreed = judge(&model, &json!({"label": " dog "}));
        assert_eq!(agreed.model_label.as_deref(), Some("Dog"));
        assert_eq!(agreed.agreed, Some(true));
        assert_eq!(judge(&model, &json!("cat")).agreed, Some(false));
        // A reviewers' answer with no label says nothing about the model.
        let unknown = judge(&model, &json!({"notes": "blurry"}));
        assert_eq!(unknown, Judged { model_label: None, agreed: None });
    }

    #[test]
    fn generated_text_against_the_reviewers_text_normalised() {
        let chat = response(r#"{"choices":[{"message":{"content":"Paris  is the\ncapital."}}]}"#);
        let same = judge(&chat, &json!({"text": "paris is the capital."}));
        assert_eq!(same.agreed, Some(true));
        assert_eq!(same.model_label.as_deref(), Some("Paris  is the\ncapital."));
        assert_eq!(judge(&chat, &json!("Lyon")).agreed, Some(false));
    }

    #[test]
    fn unnamed_probabilities_claim_nothing() {
        let tf = response(r#"{"predictions": [[0.1, 0.9]]}"#);
        assert_eq!(judge(&tf, &json!("1")), Judged { model_label: None, agreed: None });
    }

    #[test]
    fn buckets_are_tenths() {
        let at = |c| AgreementCount::new("r", &[Reason::Sampled], Some(c), true).bucket;
        assert_eq!(at(0.0), Some("0.0"));
        assert_eq!(at(0.85), Some("0.8"));
        assert_eq!(at(0.9999), Some("0.9"));
        assert_eq!(at(1.0), Some("0.9"));
        assert_eq!(AgreementCount::new("r", &[], None, true).bucket, None);
    }
}
