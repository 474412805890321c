//! `classify`: choose one label — configured, else the model's — with the model's top label
//! pre-selected. Answers `{"label": "<label>"}`, the shape the joiner consolidates and the
//! demo's simulated reviewers publish.

use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Form, Task, Template};
use crate::console::config::MAX_NAME_CHARS;
use crate::console::prediction;

pub struct Classify;

/// Labels beyond the ninth have no number key.
const NUMBER_KEYS: usize = 9;

impl Template for Classify {
    fn model_answer(&self, task: &Task<'_>) -> Markup {
        let top = prediction::top(&task.choices);
        let score = task
            .choices
            .iter()
            .find(|c| Some(c.label.as_str()) == top)
            .and_then(|c| c.score);
        html! {
            @match top {
                Some(label) => p.model-label {
                    span.label { (label) }
                    @if let Some(score) = score { " " span.score { (format!("{score:.2}")) } }
                },
                None => p.muted { "The model's answer names no label this console can read." },
            }
        }
    }

    fn controls(&self, task: &Task<'_>, draft: Option<&Form>) -> Markup {
        let chosen = draft
            .and_then(|form| form.get("label"))
            .or_else(|| prediction::top(&task.choices));
        if task.choices.is_empty() {
            return html! {
                label.field {
                    span { "Label" }
                    input type="text" name="label" required autofocus autocomplete="off"
                        maxlength=(MAX_NAME_CHARS) value=(chosen.unwrap_or_default());
                }
            };
        }
        html! {
            fieldset.choices {
                legend { "Your answer" }
                @for (i, choice) in task.choices.iter().enumerate() {
                    label.choice {
                        input type="radio" name="label" value=(choice.label) required
                            checked[Some(choice.label.as_str()) == chosen]
                            data-key=[(i < NUMBER_KEYS).then_some(i + 1)];
                        @if i < NUMBER_KEYS { kbd { (i + 1) } } @else { kbd.blank {} }
                        span.label { (choice.label) }
                        @if let Some(score) = choice.score {
                            meter min="0" max="1" value=(score) {}
                            span.score { (format!("{score:.2}")) }
                        }
                    }
                }
            }
        }
    }

    fn answer(&self, task: &Task<'_>, form: &Form) -> Result<Value, String> {
        let label = form.get("label").map(str::trim).unwrap_or_default();
        if label.is_empty() {
            return Err("Choose a label.".into());
        }
        if label.chars().count() > MAX_NAME_CHARS {
            return Err(format!("A label is at most {MAX_NAME_CHARS} characters."));
        }
        if !task.choices.is_empty() && !task.choices.iter().any(|c| c.label == label) {
            return Err("That label is not one of the choices.".into());
        }
        Ok(json!({ "label": label }))
    }

    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        &[("1–9", "choose"), ("Enter", "submit"), ("S", "skip")]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{record, route};
    use super::*;
    use crate::console::config::TemplateKind;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn the_models_top_label_is_preselected_and_numbered() {
        let r = record(
            r#"{"inputs":"x"}"#,
            r#"[{"label":"billing","score":0.3},{"label":"shipping","score":0.6}]"#,
        );
        let task = Task::new(&r, route(TemplateKind::Classify, &[]));
        let html = Classify.controls(&task, None).into_string();
        let shipping = html.find("value=\"shipping\"").unwrap();
        let billing = html.find("value=\"billing\"").unwrap();
        assert!(shipping < billing, "best first: {html}");
        assert!(html[shipping..billing].contains("checked"), "{html}");
        assert!(html.contains("data-key=\"1\""), "{html}");
        // A refused draft keeps the reviewer's choice.
        let draft = form(&[("label", "billing")]);
        let html = Classify.controls(&task, Some(&draft)).into_string();
        let billing = html.find("value=\"billing\"").unwrap();
        assert!(html[billing..].contains("checked"), "{html}");
        assert!(!html[..billing].contains("checked"), "{html}");
    }

    #[test]
    fn only_offered_labels_are_answers() {
        let r = record(r#"{"inputs":"x"}"#, r#"[{"label":"a","score":0.3}]"#);
        let task = Task::new(&r, route(TemplateKind::Classify, &[]));
        assert_eq!(
            Classify.answer(&task, &form(&[("label", "a")])),
            Ok(json!({"label": "a"}))
        );
        assert!(Classify.answer(&task, &form(&[("label", "z")])).is_err());
        assert!(Classify.answer(&task, &form(&[])).is_err());
        // With no label to offer, the reviewer types one.
        let unknown = record(r#"{"inputs":"x"}"#, r#"{"y": 1}"#);
        let task = Task::new(&unknown, route(TemplateKind::Classify, &[]));
        assert!(
            Classify
                .controls(&task, None)
                .into_string()
                .contains("type=\"text\"")
        );
        assert_eq!(
            Classify.answer(&task, &form(&[("label", " cat ")])),
            Ok(json!({"label": "cat"}))
        );
    }

    #[test]
    fn labels_are_escaped() {
        let r = record(
            r#"{"inputs":"x"}"#,
            r#"[{"label":"\"><img src=x onerror=alert(1)>","score":0.9}]"#,
        );
        let task = Task::new(&r, route(TemplateKind::Classify, &[]));
        let html = Classify.controls(&task, None).into_string()
            + &Classify.model_answer(&task).into_string();
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&quot;&gt;&lt;img"), "{html}");
    }
}
