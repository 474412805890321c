//! `translation`: the source text and the model's output side by side, the output editable in
//! place (Amazon Translate `Text` → `TranslatedText`; Hugging Face translation, summarization
//! and text-to-text generation). Answers `{"text": "<text>"}` — what the `text` template
//! answers, so the joiner compares it with the model's text the same way — plus
//! `source_language`/`target_language` when the record names them.
//!
//! A template of its own rather than the `text` template gaining a second column: the `text`
//! template's input is a prompt or a conversation (several messages, system prompts) with no
//! single source to put beside the answer, while here the source is one text and the language
//! pair labels both columns.

use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::entities::source_text;
use super::{Form, TEXT_AREA_KEYS, Task, Template, payload_view};
use crate::prediction;
use crate::record::Payload;

pub struct Translation;

/// The keys of a translation or summary in a model's answer.
const OUTPUT_KEYS: [&str; 3] = ["TranslatedText", "translation_text", "summary_text"];

/// Whether a response is a translation or summary (not free generation).
pub fn is_translation(response: &Payload) -> bool {
    let Some(body) = prediction::json_of(response) else {
        return false;
    };
    let first = match &body {
        Value::Array(items) => items.first().cloned().unwrap_or_default(),
        other => other.clone(),
    };
    OUTPUT_KEYS.iter().any(|key| first.get(key).is_some_and(Value::is_string))
}

/// The model's output text.
fn output(task: &Task<'_>) -> String {
    prediction::text(&task.record.response.payload).unwrap_or_default()
}

/// The language pair: Translate's codes (the response's source code is the detected one when
/// the request said `auto`), else Hugging Face's `parameters.src_lang`/`tgt_lang`.
fn languages(task: &Task<'_>) -> (Option<String>, Option<String>) {
    let request = prediction::json_of(&task.record.request);
    let response = prediction::json_of(&task.record.response.payload);
    let code = |key: &str, hf: &str| {
        let read = |body: &Option<Value>, pointer: &str| {
            body.as_ref()
                .and_then(|b| b.pointer(pointer))
                .and_then(Value::as_str)
                .filter(|code| !code.trim().is_empty() && *code != "auto")
                .map(str::to_owned)
        };
        read(&response, &format!("/{key}"))
            .or_else(|| read(&request, &format!("/{key}")))
            .or_else(|| read(&request, &format!("/parameters/{hf}")))
    };
    (
        code("SourceLanguageCode", "src_lang"),
        code("TargetLanguageCode", "tgt_lang"),
    )
}

fn caption(what: &str, language: &Option<String>) -> Markup {
    html! {
        (what)
        @if let Some(code) = language { " " span.lang { (code) } }
    }
}

impl Template for Translation {
    fn input(&self, task: &Task<'_>) -> Markup {
        let (source_language, target_language) = languages(task);
        html! {
            div.side-by-side {
                figure.source {
                    figcaption { (caption("Source", &source_language)) }
                    @match source_text(&task.record.request) {
                        Some(text) => div.text lang=[source_language.as_deref()] { (text) },
                        None => p.muted { "The request holds no text this console can read." },
                    }
                }
                figure.output {
                    figcaption { label for="output" { (caption("Model output — edit it", &target_language)) } }
                    // Part of the answer form (in the side column) through its `form` attribute.
                    textarea #output name="text" form="answer-form" rows="12" spellcheck="true"
                        lang=[target_language.as_deref()] autofocus { (output(task)) }
                }
            }
            details.raw {
                summary { "Whole request" }
                (payload_view(&task.record.request, "Request"))
            }
        }
    }

    fn model_answer(&self, task: &Task<'_>) -> Markup {
        let (source_language, target_language) = languages(task);
        html! {
            @if let (Some(from), Some(to)) = (&source_language, &target_language) {
                p.muted { span.lang { (from) } " → " span.lang { (to) } }
            }
            div.text { (output(task)) }
        }
    }

    fn controls(&self, _task: &Task<'_>, _draft: Option<&Form>) -> Markup {
        html! {
            p.muted { "Correct the model's output beside the source, then submit." }
        }
    }

    fn answer(&self, task: &Task<'_>, form: &Form) -> Result<Value, String> {
        let text = form.text()?;
        if text.trim().is_empty() {
            return Err("The corrected output is empty.".into());
        }
        let mut answer = Map::new();
        answer.insert("text".into(), json!(text));
        let (source_language, target_language) = languages(task);
        if let Some(code) = source_language {
            answer.insert("source_language".into(), json!(code));
        }
        if let Some(code) = target_language {
            answer.insert("target_language".into(), json!(code));
        }
        Ok(Value::Object(answer))
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
    fn amazon_translate_side_by_side_and_the_answer_names_the_languages() {
        let r = record(
            r#"{"Text":"Where is the <b>station</b>?","SourceLanguageCode":"auto","TargetLanguageCode":"de"}"#,
            r#"{"TranslatedText":"Wo ist der <b>Bahnhof</b>?","SourceLanguageCode":"en","TargetLanguageCode":"de"}"#,
        );
        assert!(is_translation(&r.response.payload));
        let task = Task::new(&r, route(TemplateKind::Translation, &[]));
        let html = Translation.input(&task).into_string();
        let source = html.find("Where is the &lt;b&gt;station").unwrap();
        let output = html.find("Wo ist der &lt;b&gt;Bahnhof").unwrap();
        assert!(source < output, "{html}");
        assert!(html.contains("form=\"answer-form\""), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        let form = Form(vec![("text".into(), "Wo ist der Bahnhof?\r\n".into())]);
        assert_eq!(
            Translation.answer(&task, &form),
            Ok(json!({"text": "Wo ist der Bahnhof?\n", "source_language": "en", "target_language": "de"}))
        );
        let empty = Form(vec![("text".into(), " ".into())]);
        assert!(Translation.answer(&task, &empty).is_err());
    }

    #[test]
    fn hugging_face_translation_and_summary() {
        let r = record(
            r#"{"inputs":"Bonjour","parameters":{"src_lang":"fr","tgt_lang":"en"}}"#,
            r#"[{"translation_text":"Hello"}]"#,
        );
        let task = Task::new(&r, route(TemplateKind::Translation, &[]));
        assert_eq!(
            Translation.answer(&task, &Form(vec![("text".into(), "Hi".into())])),
            Ok(json!({"text": "Hi", "source_language": "fr", "target_language": "en"}))
        );
        let summary = record(r#"{"inputs":"long"}"#, r#"[{"summary_text":"short"}]"#);
        assert!(is_translation(&summary.response.payload));
        let chat = record(r#"{"inputs":"x"}"#, r#"[{"generated_text":"y"}]"#);
        assert!(!is_translation(&chat.response.payload));
    }
}
