//! A review record as a Label Studio task (pure): `data` holds what the annotator reads and
//! reviewloop's id under its own key, `meta` why it was sent to review, and `predictions` the
//! model's answer in Label Studio's result format, scored with the model's confidence.

use serde_json::{Value, json};

use super::labeling::{INPUT_KEY, INPUT_NAME, Kind, MODEL_KEY};
use crate::prediction;
use crate::record::{Encoding, Payload, ReviewRecord};

/// The task data key holding the review record's id. Not `id`: Label Studio's export writes
/// the task's own id there.
pub const ID_KEY: &str = "reviewloop_id";
/// The task meta key listing the annotations already published (the bridge's ledger).
pub const PUBLISHED_KEY: &str = "reviewloop_published";

/// At most this many text fields of a JSON request are shown.
const MAX_TEXT_FIELDS: usize = 12;

/// The task to import for `record`, asking for `kind` answers with `labels` to choose from.
pub fn task(record: &ReviewRecord, kind: Kind, labels: &[String]) -> Value {
    let mut data = json!({
        ID_KEY: record.id,
        "route": record.route,
        INPUT_KEY: input_text(&record.request),
    });
    if let Some(confidence) = record.confidence {
        data["confidence"] = json!(confidence);
    }
    let model = model_text(record, kind);
    if matches!(kind, Kind::Text | Kind::Json) {
        data[MODEL_KEY] = json!(model.clone().unwrap_or_default());
    }
    let mut meta = json!({
        "reasons": record.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "review_time": record.time,
    });
    if !record.conditions.is_empty() {
        meta["conditions"] = json!(record.conditions);
    }
    if record.truncated {
        meta["truncated"] = json!(true);
    }
    let mut task = json!({ "data": data, "meta": meta });
    if let Some(result) = prediction_result(record, kind, labels, model) {
        task["predictions"] = json!([{
            "model_version": model_version(record),
            "score": record.confidence,
            "result": result,
        }]);
    }
    task
}

/// Which model answered: the SageMaker target model or variant when known, else the route.
fn model_version(record: &ReviewRecord) -> String {
    record
        .model
        .target_model
        .clone()
        .or_else(|| record.model.variant.clone())
        .unwrap_or_else(|| record.route.clone())
}

/// The model's answer pre-filled in the control of `kind`, when it can be read.
fn prediction_result(
    record: &ReviewRecord,
    kind: Kind,
    labels: &[String],
    model: Option<String>,
) -> Option<Value> {
    let (kind_name, value) = match kind {
        Kind::Classify => {
            let choices = prediction::choices(&record.response.payload, labels);
            let top = prediction::top(&choices)?;
            // Label Studio shows only configured choices.
            if !labels.iter().any(|l| l == top) {
                return None;
            }
            ("choices", json!({ "choices": [top] }))
        }
        Kind::Text | Kind::Json => ("textarea", json!({ "text": [model?] })),
    };
    Some(json!([{
        "from_name": kind.control(),
        "to_name": INPUT_NAME,
        "type": kind_name,
        "value": value,
    }]))
}

/// The model's answer as text: its generated text, or its JSON pretty-printed.
fn model_text(record: &ReviewRecord, kind: Kind) -> Option<String> {
    let response = &record.response.payload;
    match kind {
        Kind::Classify => None,
        Kind::Text => prediction::text(response),
        Kind::Json => prediction::json_of(response)
            .and_then(|value| serde_json::to_string_pretty(&value).ok()),
    }
}

/// The request as the annotator reads it: a JSON body's text fields (with their paths when
/// there are several), a text body as it is, a binary body described.
pub fn input_text(payload: &Payload) -> String {
    match payload.encoding {
        Encoding::Json => {
            let fields = payload.text_fields(MAX_TEXT_FIELDS);
            match fields.as_slice() {
                [] => serde_json::to_string_pretty(&payload.body).unwrap_or_default(),
                [(_, text)] => text.clone(),
                many => many
                    .iter()
                    .map(|(path, text)| format!("{path}: {text}"))
                    .collect::<Vec<_>>()
                    .join("\n\n"),
            }
        }
        Encoding::Utf8 => payload.body.as_str().unwrap_or_default().to_owned(),
        Encoding::Base64 => {
            let length = payload.to_bytes().map_or(0, |b| b.len());
            format!(
                "(a binary body of {length} bytes{})",
                payload
                    .content_type
                    .as_deref()
                    .map(|t| format!(", {t}"))
                    .unwrap_or_default()
            )
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::{ModelInfo, Reason, ResponsePayload};

    pub fn record(request: &str, response: &str) -> ReviewRecord {
        ReviewRecord {
            id: "r-1".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            route: "sentiment".into(),
            request: Payload::from_bytes(Some("application/json"), request.as_bytes()),
            response: ResponsePayload {
                status: 200,
                payload: Payload::from_bytes(Some("application/json"), response.as_bytes()),
            },
            confidence: Some(0.42),
            reasons: vec![Reason::LowConfidence, Reason::Sampled],
            sample_percent: 1.0,
            conditions: vec![],
            model: ModelInfo::default(),
            truncated: false,
            traceparent: None,
            redaction: None,
        }
    }

    #[test]
    fn a_classify_task_carries_the_id_reasons_and_the_models_label() {
        let labels = ["POSITIVE".to_owned(), "NEGATIVE".to_owned()];
        let r = record(
            r#"{"inputs":"I love it"}"#,
            r#"[{"label":"NEGATIVE","score":0.58},{"label":"POSITIVE","score":0.42}]"#,
        );
        let task = task(&r, Kind::Classify, &labels);
        assert_eq!(task["data"][ID_KEY], "r-1");
        assert!(task["data"].get("id").is_none());
        assert_eq!(task["data"]["text"], "I love it");
        assert_eq!(task["meta"]["reasons"], json!(["low_confidence", "sampled"]));
        let prediction = &task["predictions"][0];
        assert_eq!(prediction["model_version"], "sentiment");
        assert_eq!(prediction["score"], 0.42);
        assert_eq!(
            prediction["result"],
            json!([{"from_name": "label", "to_name": "input", "type": "choices",
                    "value": {"choices": ["NEGATIVE"]}}])
        );
    }

    #[test]
    fn a_label_outside_the_choices_is_not_predicted() {
        let labels = ["yes".to_owned(), "no".to_owned()];
        let r = record(r#"{"inputs":"x"}"#, r#"[{"label":"maybe","score":0.9}]"#);
        assert!(task(&r, Kind::Classify, &labels).get("predictions").is_none());
    }

    #[test]
    fn a_text_task_prefills_the_models_text() {
        let mut r = record(
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"user","content":"there"}]}"#,
            r#"{"choices":[{"message":{"content":"Hello!"}}]}"#,
        );
        r.model.target_model = Some("chat-v2".into());
        let task = task(&r, Kind::Text, &[]);
        assert_eq!(
            task["data"]["text"],
            // Keys in serde_json's order (sorted).
            "messages[0].content: hi\n\nmessages[0].role: user\n\nmessages[1].content: there\n\nmessages[1].role: user"
        );
        assert_eq!(task["data"]["model"], "Hello!");
        let prediction = &task["predictions"][0];
        assert_eq!(prediction["model_version"], "chat-v2");
        assert_eq!(prediction["result"][0]["value"]["text"][0], "Hello!");
        assert_eq!(prediction["result"][0]["from_name"], "text");
    }

    #[test]
    fn binary_requests_are_described() {
        let payload = Payload::from_bytes(Some("image/png"), &[0xff, 0, 0x9f]);
        assert_eq!(input_text(&payload), "(a binary body of 3 bytes, image/png)");
    }
}
