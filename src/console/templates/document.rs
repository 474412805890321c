//! `document`: a Textract AnalyzeDocument answer on its page image — the form's key-value
//! pairs listed beside the page, each value editable, their boxes drawn on the page, and the
//! pairs read with less confidence than the route's `highlight_below` marked on both.
//! Answers `{"pairs": [{"key", "value", "model_value", "confidence", "corrected"}],
//! "corrected": n}`.

use maud::{Markup, html};
use serde_json::{Value, json};

use super::boxes::{Area, image_with_areas};
use super::{Form, Task, Template};
use crate::console::prediction::{self, TextractBlocks};

pub struct Document;

/// A value longer than this is refused (a form field, not a document).
const MAX_VALUE_CHARS: usize = 4096;

/// One key-value pair of a form, as Textract read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Pair {
    pub key: String,
    pub value: String,
    /// The lower of the key's and the value's confidence, 0–1.
    pub confidence: Option<f64>,
    pub key_area: Option<Area>,
    pub value_area: Option<Area>,
}

/// The KEY_VALUE_SET pairs of a Textract answer (`Blocks`), in the order of their keys.
pub fn pairs(response: &Value) -> Vec<Pair> {
    let Some(blocks) = TextractBlocks::of(response) else {
        return Vec::new();
    };
    let text = |block: &Value| -> String {
        blocks
            .related(block, "CHILD")
            .iter()
            .filter_map(|child| {
                match child.get("BlockType").and_then(Value::as_str)? {
                    "WORD" => child.get("Text").and_then(Value::as_str).map(str::to_owned),
                    "SELECTION_ELEMENT" => child
                        .get("SelectionStatus")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    _ => None,
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let confidence = |block: &Value| block.get("Confidence").and_then(Value::as_f64);
    let area = |block: &Value| {
        block
            .pointer("/Geometry/BoundingBox")
            .and_then(Area::from_bounding_box)
    };
    blocks
        .keys()
        .map(|key| {
            let value = blocks.related(key, "VALUE").into_iter().next();
            let confidences = [Some(key), value]
                .into_iter()
                .flatten()
                .filter_map(confidence);
            Pair {
                key: text(key),
                value: value.map(text).unwrap_or_default(),
                confidence: confidences.reduce(f64::min).map(|c| c / 100.0),
                key_area: area(key),
                value_area: value.and_then(area),
            }
        })
        .collect()
}

fn task_pairs(task: &Task<'_>) -> Vec<Pair> {
    prediction::json_of(&task.record.response.payload)
        .map(|body| pairs(&body))
        .unwrap_or_default()
}

fn is_low(pair: &Pair, task: &Task<'_>) -> bool {
    pair.confidence
        .is_some_and(|c| c < task.route.media.highlight_below)
}

impl Template for Document {
    fn input(&self, task: &Task<'_>) -> Markup {
        let found = task_pairs(task);
        let size = super::boxes::image_size(task);
        let keys = found.iter().enumerate().filter_map(|(i, pair)| {
            Some((format!("key-{}", i + 1), pair.key_area?, String::new(), "key"))
        });
        let values = found.iter().enumerate().filter_map(|(i, pair)| {
            let class = if is_low(pair, task) { "value low" } else { "value" };
            Some((format!("area-{}", i + 1), pair.value_area?, (i + 1).to_string(), class))
        });
        image_with_areas(task, size, keys.chain(values), "page image")
    }

    fn model_answer(&self, task: &Task<'_>) -> Markup {
        let found = task_pairs(task);
        let low = found.iter().filter(|p| is_low(p, task)).count();
        html! {
            @if found.is_empty() {
                p.muted { "The model's answer holds no key-value pairs (Textract FORMS) this console can read." }
            } @else {
                p {
                    (found.len()) " field" @if found.len() != 1 { "s" } " read, "
                    span.low-count { (low) } " below "
                    (format!("{:.0} %", task.route.media.highlight_below * 100.0))
                }
            }
        }
    }

    fn controls(&self, task: &Task<'_>, draft: Option<&Form>) -> Markup {
        let found = task_pairs(task);
        html! {
            fieldset.pairs {
                legend { "Correct the values" }
                @for (i, pair) in found.iter().enumerate() {
                    @let field = format!("value.{i}");
                    @let value = draft.and_then(|f| f.get(&field)).unwrap_or(&pair.value);
                    label.pair.low[is_low(pair, task)] data-area=(format!("area-{}", i + 1)) {
                        span.head {
                            span.num { (i + 1) }
                            span.key { (pair.key) }
                            span.score {
                                (pair.confidence.map_or(String::new(), |c| format!("{:.0} %", c * 100.0)))
                            }
                        }
                        input type="text" name=(field) value=(value) autocomplete="off"
                            maxlength=(MAX_VALUE_CHARS);
                    }
                }
            }
        }
    }

    fn answer(&self, task: &Task<'_>, form: &Form) -> Result<Value, String> {
        let found = task_pairs(task);
        let mut answered = Vec::with_capacity(found.len());
        for (i, pair) in found.iter().enumerate() {
            let Some(value) = form.get(&format!("value.{i}")) else {
                return Err(format!("The form has no value for “{}”.", pair.key));
            };
            let value = value.trim();
            if value.chars().count() > MAX_VALUE_CHARS {
                return Err(format!("A value is at most {MAX_VALUE_CHARS} characters."));
            }
            answered.push(json!({
                "key": pair.key,
                "value": value,
                "model_value": pair.value,
                "confidence": pair.confidence,
                "corrected": value != pair.value,
            }));
        }
        let corrected = answered.iter().filter(|p| p["corrected"] == true).count();
        Ok(json!({ "pairs": answered, "corrected": corrected }))
    }

    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        &[("Ctrl+Enter", "submit"), ("Esc", "leave the field"), ("S", "skip")]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{record, route};
    use super::*;
    use crate::console::config::TemplateKind;

    fn geometry(left: f64, top: f64) -> Value {
        json!({"BoundingBox": {"Left": left, "Top": top, "Width": 0.2, "Height": 0.05}})
    }

    pub fn textract() -> Value {
        json!({"Blocks": [
            {"Id": "k1", "BlockType": "KEY_VALUE_SET", "EntityTypes": ["KEY"], "Confidence": 98.0,
             "Geometry": geometry(0.1, 0.1),
             "Relationships": [{"Type": "VALUE", "Ids": ["v1"]}, {"Type": "CHILD", "Ids": ["w1", "w2"]}]},
            {"Id": "v1", "BlockType": "KEY_VALUE_SET", "EntityTypes": ["VALUE"], "Confidence": 97.0,
             "Geometry": geometry(0.4, 0.1), "Relationships": [{"Type": "CHILD", "Ids": ["w3"]}]},
            {"Id": "k2", "BlockType": "KEY_VALUE_SET", "EntityTypes": ["KEY"], "Confidence": 95.0,
             "Geometry": geometry(0.1, 0.3),
             "Relationships": [{"Type": "VALUE", "Ids": ["v2"]}, {"Type": "CHILD", "Ids": ["w4"]}]},
            {"Id": "v2", "BlockType": "KEY_VALUE_SET", "EntityTypes": ["VALUE"], "Confidence": 61.5,
             "Geometry": geometry(0.4, 0.3), "Relationships": [{"Type": "CHILD", "Ids": ["s1"]}]},
            {"Id": "w1", "BlockType": "WORD", "Text": "Full", "Confidence": 99.0},
            {"Id": "w2", "BlockType": "WORD", "Text": "name:", "Confidence": 99.0},
            {"Id": "w3", "BlockType": "WORD", "Text": "Dana Smith", "Confidence": 97.0},
            {"Id": "w4", "BlockType": "WORD", "Text": "Insured?", "Confidence": 95.0},
            {"Id": "s1", "BlockType": "SELECTION_ELEMENT", "SelectionStatus": "NOT_SELECTED"}
        ]})
    }

    #[test]
    fn key_value_sets_become_pairs_with_the_lower_confidence() {
        let found = pairs(&textract());
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].key, "Full name:");
        assert_eq!(found[0].value, "Dana Smith");
        assert_eq!(found[0].confidence, Some(0.97));
        assert_eq!(found[1].key, "Insured?");
        assert_eq!(found[1].value, "NOT_SELECTED");
        assert_eq!(found[1].confidence, Some(0.615));
        assert_eq!(found[1].value_area.unwrap().left, 0.4);
    }

    #[test]
    fn the_low_confidence_pair_is_marked_and_corrections_are_the_answer() {
        let r = record(r#"{"inputs":"x"}"#, &textract().to_string());
        let task = Task::new(&r, route(TemplateKind::Document, &[]));
        let html = Document.controls(&task, None).into_string();
        assert_eq!(html.matches("class=\"pair low\"").count(), 1, "{html}");
        let low = html.find("class=\"pair low\"").unwrap();
        assert!(html[low..].contains("Insured?"), "{html}");
        let form = Form(vec![
            ("value.0".into(), "Dana Smith".into()),
            ("value.1".into(), " SELECTED ".into()),
        ]);
        let answer = Document.answer(&task, &form).unwrap();
        assert_eq!(answer["corrected"], 1);
        assert_eq!(answer["pairs"][1]["value"], "SELECTED");
        assert_eq!(answer["pairs"][1]["model_value"], "NOT_SELECTED");
        assert_eq!(answer["pairs"][0]["corrected"], false);
    }
}
