//! `text`: correct the model's text (LLM outputs), pre-filled with what it generated. Answers
//! `{"text": "<text>"}`.

use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Form, TEXT_AREA_KEYS, Task, Template};
use crate::console::prediction;

pub struct Text;

impl Template for Text {
    fn model_answer(&self, task: &Task<'_>) -> Markup {
        match prediction::text(&task.record.response.payload) {
            Some(text) => html! { div.text { (text) } },
            None => html! { p.muted { "The model's answer holds no text this console can read." } },
        }
    }

    fn controls(&self, task: &Task<'_>, draft: Option<&Form>) -> Markup {
        let text = match draft.and_then(|form| form.get("text")) {
            Some(text) => text.to_owned(),
            None => prediction::text(&task.record.response.payload).unwrap_or_default(),
        };
        html! {
            label.field {
                span { "Corrected text" }
                textarea name="text" rows="12" autofocus spellcheck="true" { (text) }
            }
        }
    }

    fn answer(&self, _task: &Task<'_>, form: &Form) -> Result<Value, String> {
        Ok(json!({ "text": form.text()? }))
    }

    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        TEXT_AREA_KEYS
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{record, route};
    use super::*;
    use crate::console::config::TemplateKind;

    #[test]
    fn the_models_text_is_the_starting_point() {
        let r = record(
            r#"{"messages":[{"role":"user","content":"hi"}]}"#,
            r#"{"choices":[{"message":{"content":"Hello </textarea><script>x()</script>"}}]}"#,
        );
        let task = Task::new(&r, route(TemplateKind::Text, &[]));
        let html = Text.controls(&task, None).into_string();
        assert!(
            html.contains("Hello &lt;/textarea&gt;&lt;script&gt;"),
            "{html}"
        );
        let form = Form(vec![("text".into(), "line 1\r\nline 2".into())]);
        assert_eq!(
            Text.answer(&task, &form),
            Ok(json!({"text": "line 1\nline 2"}))
        );
    }
}
