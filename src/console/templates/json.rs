//! `json`: edit the model's JSON answer; the answer is the edited value, checked to be JSON
//! in the browser before it is sent and again here.

use maud::{Markup, html};
use serde_json::Value;

use super::{Form, TEXT_AREA_KEYS, Task, Template};
use crate::console::prediction;

pub struct Json;

impl Json {
    fn model_json(task: &Task<'_>) -> String {
        prediction::json_of(&task.record.response.payload)
            .and_then(|value| serde_json::to_string_pretty(&value).ok())
            .unwrap_or_else(|| "null".into())
    }
}

impl Template for Json {
    fn model_answer(&self, task: &Task<'_>) -> Markup {
        html! { pre.json { code { (Json::model_json(task)) } } }
    }

    fn controls(&self, task: &Task<'_>, draft: Option<&Form>) -> Markup {
        let text = match draft.and_then(|form| form.get("json")) {
            Some(text) => text.to_owned(),
            None => Json::model_json(task),
        };
        html! {
            label.field {
                span { "Corrected JSON" }
                textarea.code name="json" rows="16" autofocus spellcheck="false" data-json="1" { (text) }
            }
            p.json-error role="alert" hidden {}
        }
    }

    fn answer(&self, _task: &Task<'_>, form: &Form) -> Result<Value, String> {
        let text = form.get("json").ok_or("The form has no JSON field.")?;
        serde_json::from_str(text).map_err(|e| format!("This is not valid JSON: {e}."))
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
    use serde_json::json;

    #[test]
    fn the_edited_json_is_the_answer_and_bad_json_is_refused() {
        let r = record(r#"{"inputs":"x"}"#, r#"{"boxes":[[1,2,3,4]]}"#);
        let task = Task::new(&r, route(TemplateKind::Json, &[]));
        let html = Json.controls(&task, None).into_string();
        assert!(html.contains("&quot;boxes&quot;"), "{html}");
        let form = |text: &str| Form(vec![("json".into(), text.into())]);
        assert_eq!(
            Json.answer(&task, &form(r#"{"boxes":[]}"#)),
            Ok(json!({"boxes": []}))
        );
        let err = Json.answer(&task, &form("{\"boxes\": [")).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
    }
}
