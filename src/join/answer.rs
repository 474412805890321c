//! Reading the joiner's inputs (pure): reviewers' answers in reviewloop's completed-record
//! format or as Amazon A2I output documents, and review records. Anything else is an
//! [`Invalid`] with a reason a human can act on.

use serde_json::{Map, Value};

use crate::record::{Answer, ReviewRecord};

/// Why a record cannot be used, and its id when one could be read.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub id: Option<String>,
    pub detail: String,
}

impl Invalid {
    fn new(id: Option<&str>, detail: impl Into<String>) -> Invalid {
        Invalid {
            id: id.map(str::to_owned),
            detail: detail.into(),
        }
    }
}

/// The answers in one completed-topic record: one for reviewloop's format, one per
/// `humanAnswers[]` element for an A2I output document. A record with any bad answer is
/// invalid as a whole (it goes to the dead-letter topic intact rather than half used).
pub fn parse_completed(bytes: &[u8]) -> Result<(String, Vec<Answer>), Invalid> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| Invalid::new(None, format!("not JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(Invalid::new(None, "not a JSON object"));
    };
    if object.contains_key("humanLoopName") || object.contains_key("humanAnswers") {
        parse_a2i(&object)
    } else {
        parse_reviewloop(&object)
    }
}

/// A review record as the proxy writes it.
pub fn parse_review(bytes: &[u8]) -> Result<ReviewRecord, Invalid> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| Invalid::new(None, format!("not JSON: {e}")))?;
    let id = value.get("id").and_then(Value::as_str).map(str::to_owned);
    let record: ReviewRecord = serde_json::from_value(value)
        .map_err(|e| Invalid::new(id.as_deref(), format!("not a review record: {e}")))?;
    if record.id.is_empty() {
        return Err(Invalid::new(None, "\"id\" is empty"));
    }
    Ok(record)
}

fn parse_reviewloop(object: &Map<String, Value>) -> Result<(String, Vec<Answer>), Invalid> {
    let raw_id = required_string(object, "id", None)?;
    let id = Some(raw_id);
    let reviewer = required_string(object, "reviewer", id)?;
    let answer = match object.get("answer") {
        None | Some(Value::Null) => return Err(Invalid::new(id, "missing \"answer\"")),
        Some(answer) => answer.clone(),
    };
    let submitted_at = optional_time(object, "submitted_at", id)?;
    let time_spent_seconds = optional_seconds(object, "time_spent_seconds", id)?;
    Ok((
        raw_id.to_owned(),
        vec![Answer {
            reviewer: reviewer.to_owned(),
            answer,
            submitted_at,
            time_spent_seconds,
        }],
    ))
}

fn parse_a2i(object: &Map<String, Value>) -> Result<(String, Vec<Answer>), Invalid> {
    let id = required_string(object, "humanLoopName", None)?;
    let some_id = Some(id);
    let Some(Value::Array(human_answers)) = object.get("humanAnswers") else {
        return Err(Invalid::new(some_id, "\"humanAnswers\" must be an array"));
    };
    if human_answers.is_empty() {
        return Err(Invalid::new(some_id, "\"humanAnswers\" is empty"));
    }
    let mut answers = Vec::with_capacity(human_answers.len());
    for (i, element) in human_answers.iter().enumerate() {
        let Value::Object(element) = element else {
            return Err(Invalid::new(
                some_id,
                format!("humanAnswers[{i}] is not an object"),
            ));
        };
        let at = |e: Invalid| Invalid::new(some_id, format!("humanAnswers[{i}]: {}", e.detail));
        let reviewer = required_string(element, "workerId", some_id).map_err(at)?;
        let answer = match element.get("answerContent") {
            None | Some(Value::Null) => {
                return Err(at(Invalid::new(some_id, "missing \"answerContent\"")));
            }
            Some(answer) => answer.clone(),
        };
        answers.push(Answer {
            reviewer: reviewer.to_owned(),
            answer,
            submitted_at: optional_time(element, "submissionTime", some_id).map_err(at)?,
            time_spent_seconds: optional_seconds(element, "timeSpentInSeconds", some_id)
                .map_err(at)?,
        });
    }
    Ok((id.to_owned(), answers))
}

fn required_string<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    id: Option<&str>,
) -> Result<&'a str, Invalid> {
    match object.get(key) {
        None | Some(Value::Null) => Err(Invalid::new(id, format!("missing \"{key}\""))),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(Invalid::new(id, format!("\"{key}\" is empty")))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(Invalid::new(id, format!("\"{key}\" must be a string"))),
    }
}

fn optional_time(
    object: &Map<String, Value>,
    key: &str,
    id: Option<&str>,
) -> Result<Option<String>, Invalid> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if humantime::parse_rfc3339_weak(s).is_ok() => Ok(Some(s.clone())),
        Some(other) => Err(Invalid::new(
            id,
            format!("\"{key}\" must be an RFC 3339 time, got {other}"),
        )),
    }
}

fn optional_seconds(
    object: &Map<String, Value>,
    key: &str,
    id: Option<&str>,
) -> Result<Option<f64>, Invalid> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_f64().is_some_and(|s| s >= 0.0) => Ok(n.as_f64()),
        Some(other) => Err(Invalid::new(
            id,
            format!("\"{key}\" must be a number of seconds >= 0, got {other}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn reviewloop_format() {
        let (id, answers) = parse_completed(
            br#"{"id":"r1","reviewer":"alice","answer":{"label":"cat"},"submitted_at":"2026-11-22T10:00:00.123Z","time_spent_seconds":12.5,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(id, "r1");
        assert_eq!(
            answers,
            vec![Answer {
                reviewer: "alice".into(),
                answer: json!({"label": "cat"}),
                submitted_at: Some("2026-11-22T10:00:00.123Z".into()),
                time_spent_seconds: Some(12.5),
            }]
        );
    }

    #[test]
    fn a2i_output_document_gives_one_answer_per_worker() {
        let doc = json!({
            "awsManagedHumanLoopRequestSource": "AWS/Rekognition/DetectModerationLabels/Image/V3",
            "flowDefinitionArn": "arn:aws:sagemaker:us-east-1:111122223333:flow-definition/f",
            "humanAnswers": [
                {"acceptanceTime": "2026-11-22T10:00:00.000Z",
                 "answerContent": {"label": {"label": "cat"}},
                 "submissionTime": "2026-11-22T10:00:24.739Z",
                 "timeSpentInSeconds": 24.739,
                 "workerId": "w-1",
                 "workerMetadata": {"identityData": {"identityProviderType": "Cognito"}}},
                {"answerContent": {"label": {"label": "dog"}}, "workerId": "w-2"}
            ],
            "humanLoopName": "r7",
            "inputContent": {"initialValue": 0.2}
        });
        let (id, answers) = parse_completed(doc.to_string().as_bytes()).unwrap();
        assert_eq!(id, "r7");
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].reviewer, "w-1");
        assert_eq!(answers[0].answer, json!({"label": {"label": "cat"}}));
        assert_eq!(answers[0].time_spent_seconds, Some(24.739));
        assert_eq!(answers[1].reviewer, "w-2");
        assert_eq!(answers[1].submitted_at, None);
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let cases: [(&[u8], Option<&str>, &str); 10] = [
            (b"not json", None, "not JSON"),
            (b"[1,2]", None, "not a JSON object"),
            (br#"{"reviewer":"a","answer":1}"#, None, "missing \"id\""),
            (
                br#"{"id":7,"reviewer":"a","answer":1}"#,
                None,
                "\"id\" must be a string",
            ),
            (
                br#"{"id":"x","answer":1}"#,
                Some("x"),
                "missing \"reviewer\"",
            ),
            (
                br#"{"id":"x","reviewer":"a"}"#,
                Some("x"),
                "missing \"answer\"",
            ),
            (
                br#"{"id":"x","reviewer":"a","answer":1,"submitted_at":"yesterday"}"#,
                Some("x"),
                "RFC 3339",
            ),
            (
                br#"{"id":"x","reviewer":"a","answer":1,"time_spent_seconds":-1}"#,
                Some("x"),
                ">= 0",
            ),
            (
                br#"{"humanLoopName":"h","humanAnswers":[]}"#,
                Some("h"),
                "empty",
            ),
            (
                br#"{"humanLoopName":"h","humanAnswers":[{"answerContent":{}}]}"#,
                Some("h"),
                "humanAnswers[0]: missing \"workerId\"",
            ),
        ];
        for (bytes, id, detail) in cases {
            let invalid = parse_completed(bytes).unwrap_err();
            assert_eq!(
                invalid.id.as_deref(),
                id,
                "{}",
                String::from_utf8_lossy(bytes)
            );
            assert!(
                invalid.detail.contains(detail),
                "{:?} should mention {detail:?}",
                invalid.detail
            );
        }
    }

    #[test]
    fn review_records_are_checked_whole() {
        let invalid = parse_review(br#"{"id":"r1","time":"t"}"#).unwrap_err();
        assert_eq!(invalid.id.as_deref(), Some("r1"));
        assert!(
            invalid.detail.contains("not a review record"),
            "{}",
            invalid.detail
        );
        assert!(parse_review(b"\x00\xff").is_err());
    }

    proptest! {
        /// Noise never panics the parser, and never yields an answer without an id or a
        /// reviewer.
        #[test]
        fn noise_is_invalid_or_well_formed(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            if let Ok((id, answers)) = parse_completed(&bytes) {
                prop_assert!(!id.is_empty());
                prop_assert!(answers.iter().all(|a| !a.reviewer.is_empty()));
            }
        }
    }
}
