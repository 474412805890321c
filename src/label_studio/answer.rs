//! A Label Studio annotation as an answer on the completed topic (pure).
//!
//! The answer is an object keyed by each control's name (`from_name`): a Choices gives its
//! choice (a list when several were chosen), a TextArea its text, any other control its
//! `value` as Label Studio wrote it, and several regions of one control a list. With the
//! derived labeling configs this is exactly what the console publishes: `{"label": "…"}` or
//! `{"text": "…"}`. A TextArea named `json` holds the answer as JSON text, which becomes the
//! answer itself.

use serde_json::{Map, Value};

use super::task::ID_KEY;
use crate::record::{Answer, CompletedRecord};

/// Why an annotation gives no answer (`reviewloop_label_studio_skipped_total{reason}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// The annotator skipped the task.
    Cancelled,
    /// Nothing was labeled.
    Empty,
    /// The task has no `reviewloop_id` (not imported by the bridge).
    NoId,
    /// The annotation cannot be read (the detail says why).
    Unreadable(String),
}

/// One annotation as the bridge reads it from a webhook or the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub id: u64,
    pub task: u64,
    /// The annotator's user id.
    pub completed_by: u64,
    pub cancelled: bool,
    pub result: Vec<Value>,
    pub lead_time: Option<f64>,
    /// When it was last saved (RFC 3339, as Label Studio writes it).
    pub updated_at: Option<String>,
}

impl Annotation {
    /// Reads an annotation object (`completed_by` as an id, or a user object with an id).
    pub fn from_json(value: &Value) -> Result<Annotation, NoAnswer> {
        let unreadable = |what: &str| NoAnswer::Unreadable(format!("the annotation has no {what}"));
        let id = value.get("id").and_then(Value::as_u64).ok_or_else(|| unreadable("id"))?;
        let task = value
            .get("task")
            .and_then(|t| t.as_u64().or_else(|| t.get("id").and_then(Value::as_u64)))
            .ok_or_else(|| unreadable("task"))?;
        let completed_by = value
            .get("completed_by")
            .and_then(|u| u.as_u64().or_else(|| u.get("id").and_then(Value::as_u64)))
            .ok_or_else(|| unreadable("annotator (completed_by)"))?;
        let result = match value.get("result") {
            Some(Value::Array(items)) => items.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(unreadable("result list")),
        };
        Ok(Annotation {
            id,
            task,
            completed_by,
            cancelled: value
                .get("was_cancelled")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            result,
            lead_time: value
                .get("lead_time")
                .and_then(Value::as_f64)
                .filter(|s| s.is_finite() && *s >= 0.0),
            updated_at: value
                .get("updated_at")
                .or_else(|| value.get("created_at"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }
}

/// The answer an annotation's result gives.
pub fn answer(annotation: &Annotation) -> Result<Value, NoAnswer> {
    if annotation.cancelled {
        return Err(NoAnswer::Cancelled);
    }
    let mut by_control: Map<String, Value> = Map::new();
    for item in &annotation.result {
        let Some(control) = item.get("from_name").and_then(Value::as_str) else {
            continue;
        };
        let Some(value) = item.get("value") else {
            continue;
        };
        let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
        let simple = match kind {
            "choices" => match value.get("choices") {
                Some(Value::Array(chosen)) if chosen.len() == 1 => chosen[0].clone(),
                Some(chosen) => chosen.clone(),
                None => continue,
            },
            "textarea" => match value.get("text") {
                Some(Value::Array(lines)) => Value::String(
                    lines
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                Some(Value::String(text)) => Value::String(text.clone()),
                _ => continue,
            },
            _ => value.clone(),
        };
        match by_control.get_mut(control) {
            None => {
                by_control.insert(control.to_owned(), simple);
            }
            // Several regions of one control: a list, in the annotation's order.
            Some(Value::Array(list)) if kind != "choices" => list.push(simple),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, simple]);
            }
        }
    }
    if by_control.is_empty() {
        return Err(NoAnswer::Empty);
    }
    if by_control.len() == 1
        && let Some(Value::String(text)) = by_control.get("json")
    {
        return serde_json::from_str(text)
            .map_err(|e| NoAnswer::Unreadable(format!("the json answer is not JSON: {e}")));
    }
    Ok(Value::Object(by_control))
}

/// The completed record for `annotation` of the task whose data is `task_data`, answered by
/// `reviewer` (the annotator's email).
pub fn completed(
    annotation: &Annotation,
    task_data: &Value,
    reviewer: &str,
) -> Result<CompletedRecord, NoAnswer> {
    let id = task_data
        .get(ID_KEY)
        .and_then(Value::as_str)
        .filter(|id| !id.trim().is_empty())
        .ok_or(NoAnswer::NoId)?;
    let answer = answer(annotation)?;
    // Label Studio writes microseconds; the completed record wants RFC 3339.
    let submitted_at = annotation
        .updated_at
        .as_deref()
        .filter(|t| humantime::parse_rfc3339_weak(t).is_ok())
        .map(str::to_owned);
    Ok(CompletedRecord {
        id: id.to_owned(),
        answer: Answer {
            reviewer: reviewer.to_owned(),
            answer,
            submitted_at,
            time_spent_seconds: annotation.lead_time,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn annotation(result: Value) -> Annotation {
        Annotation::from_json(&json!({
            "id": 5, "task": 9, "completed_by": 2, "was_cancelled": false,
            "result": result, "lead_time": 3.25,
            "created_at": "2026-12-02T12:47:07.469590Z",
            "updated_at": "2026-12-02T12:47:08.000001Z",
        }))
        .unwrap()
    }

    #[test]
    fn a_choice_becomes_the_consoles_label_answer() {
        let a = annotation(json!([{"from_name": "label", "to_name": "input", "type": "choices",
                                     "value": {"choices": ["NEGATIVE"]}}]));
        let record = completed(&a, &json!({"reviewloop_id": "r-1", "id": 77}), "ann@x.test").unwrap();
        assert_eq!(record.id, "r-1");
        assert_eq!(record.answer.reviewer, "ann@x.test");
        assert_eq!(record.answer.answer, json!({"label": "NEGATIVE"}));
        assert_eq!(record.answer.time_spent_seconds, Some(3.25));
        assert_eq!(
            record.answer.submitted_at.as_deref(),
            Some("2026-12-02T12:47:08.000001Z")
        );
        // The completed record the joiner reads.
        let bytes = serde_json::to_vec(&record).unwrap();
        let (id, answers) = crate::join::answer::parse_completed(&bytes).unwrap();
        assert_eq!((id.as_str(), answers.len()), ("r-1", 1));
    }

    #[test]
    fn text_several_choices_regions_and_json() {
        let text = annotation(json!([{"from_name": "text", "type": "textarea",
                                        "value": {"text": ["line one", "line two"]}}]));
        assert_eq!(answer(&text).unwrap(), json!({"text": "line one\nline two"}));
        let multi = annotation(json!([{"from_name": "tags", "type": "choices",
                                         "value": {"choices": ["a", "b"]}}]));
        assert_eq!(answer(&multi).unwrap(), json!({"tags": ["a", "b"]}));
        let regions = annotation(json!([
            {"from_name": "ner", "type": "labels", "value": {"start": 0, "end": 3, "labels": ["ORG"]}},
            {"from_name": "ner", "type": "labels", "value": {"start": 5, "end": 9, "labels": ["PER"]}},
            {"from_name": "ner", "type": "labels", "value": {"start": 11, "end": 12, "labels": ["LOC"]}},
        ]));
        let got = answer(&regions).unwrap();
        assert_eq!(got["ner"].as_array().unwrap().len(), 3, "{got}");
        assert_eq!(got["ner"][2]["labels"][0], "LOC");
        let edited = annotation(json!([{"from_name": "json", "type": "textarea",
                                          "value": {"text": ["{\"boxes\": [[1, 2]]}"]}}]));
        assert_eq!(answer(&edited).unwrap(), json!({"boxes": [[1, 2]]}));
        let broken = annotation(json!([{"from_name": "json", "type": "textarea",
                                          "value": {"text": ["{nope"]}}]));
        assert!(matches!(answer(&broken), Err(NoAnswer::Unreadable(_))));
    }

    #[test]
    fn skipped_empty_and_foreign_tasks_give_no_answer() {
        let mut skipped = annotation(json!([]));
        skipped.cancelled = true;
        assert_eq!(answer(&skipped), Err(NoAnswer::Cancelled));
        assert_eq!(answer(&annotation(json!([]))), Err(NoAnswer::Empty));
        let a = annotation(json!([{"from_name": "label", "type": "choices", "value": {"choices": ["x"]}}]));
        assert_eq!(completed(&a, &json!({"text": "x"}), "u"), Err(NoAnswer::NoId));
        assert!(matches!(
            Annotation::from_json(&json!({"id": 1, "task": 2})),
            Err(NoAnswer::Unreadable(_))
        ));
    }
}
