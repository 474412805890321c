//! `template = "auto"`: the template an item is shown with, chosen from its record — the
//! request's content type, the confidence preset that reads the model's answer, and the answer's
//! shape.
//!
//! The review record does not name the preset that read its confidence, so the console asks
//! the same question `confidence.preset = "auto"` asks ([`confidence::detect`]) of the recorded
//! response: a route with a fixed preset gets the answer's own family as well, since a preset
//! only fits the shape it reads.

use super::entities::read_spans;
use super::translation::is_translation;
use super::Task;
use crate::confidence::{self, Document, Preset};
use crate::console::config::TemplateKind;
use crate::prediction;

/// The template for an item of a route whose template is `auto`.
pub fn choose(task: &Task<'_>) -> TemplateKind {
    let record = task.record;
    let response = &record.response.payload;
    let csv_request = record
        .request
        .content_type
        .as_deref()
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/csv"));
    let bytes = response.to_bytes().unwrap_or_default();
    let preset = confidence::detect(&Document::parse(response.content_type.as_deref(), &bytes));
    let body = prediction::json_of(response);
    let has_entities = || {
        body.as_ref()
            .and_then(read_spans)
            .is_some_and(|spans| !spans.is_empty())
    };
    match preset {
        // Chat and completions: the text template (its input is a conversation).
        Some(Preset::Openai) => return TemplateKind::Text,
        // Comprehend DetectEntities, Hugging Face token classification.
        Some(Preset::Comprehend | Preset::Huggingface) if has_entities() => {
            return TemplateKind::Entities;
        }
        _ => {}
    }
    if !task.choices.is_empty() {
        return TemplateKind::Classify;
    }
    // A tabular model's answer (SageMaker's `text/csv` score) is no text to correct.
    if csv_request {
        return TemplateKind::Json;
    }
    if is_translation(response) {
        return TemplateKind::Translation;
    }
    if prediction::text(response).is_some() {
        return TemplateKind::Text;
    }
    TemplateKind::Json
}

#[cfg(test)]
mod tests {
    use super::super::tests::{record, route};
    use super::*;
    use crate::record::Payload;

    fn kind(request: &str, response: &str) -> TemplateKind {
        let r = record(request, response);
        choose(&Task::new(&r, route(TemplateKind::Auto, &[])))
    }

    #[test]
    fn each_family_gets_its_template() {
        let comprehend = r#"{"Entities":[{"BeginOffset":0,"EndOffset":4,"Type":"PERSON","Score":0.9,"Text":"Jane"}]}"#;
        assert_eq!(kind(r#"{"Text":"Jane"}"#, comprehend), TemplateKind::Entities);
        let hf = r#"[{"entity_group":"PER","score":0.9,"word":"Jane","start":0,"end":4}]"#;
        assert_eq!(kind(r#"{"inputs":"Jane"}"#, hf), TemplateKind::Entities);
        // No entity found: nothing to highlight, the answer is shown as JSON.
        assert_eq!(kind(r#"{"Text":"x"}"#, r#"{"Entities":[]}"#), TemplateKind::Json);
        let translate = r#"{"TranslatedText":"Hallo","SourceLanguageCode":"en","TargetLanguageCode":"de"}"#;
        assert_eq!(kind(r#"{"Text":"Hello"}"#, translate), TemplateKind::Translation);
        assert_eq!(
            kind(r#"{"inputs":"Hello"}"#, r#"[{"translation_text":"Hallo"}]"#),
            TemplateKind::Translation
        );
        assert_eq!(
            kind(r#"{"inputs":"long"}"#, r#"[{"summary_text":"short"}]"#),
            TemplateKind::Translation
        );
        assert_eq!(
            kind(r#"{"inputs":"x"}"#, r#"{"choices":[{"message":{"content":"y"}}]}"#),
            TemplateKind::Text
        );
        assert_eq!(kind(r#"{"inputs":"x"}"#, r#"[{"generated_text":"y"}]"#), TemplateKind::Text);
        assert_eq!(
            kind(r#"{"inputs":"x"}"#, r#"[{"label":"a","score":0.5}]"#),
            TemplateKind::Classify
        );
        assert_eq!(
            kind(r#"{"inputs":"x"}"#, r#"{"SentimentScore":{"Positive":0.4,"Negative":0.6}}"#),
            TemplateKind::Classify
        );
    }

    #[test]
    fn a_csv_row_scored_in_csv_is_shown_as_json_not_as_text() {
        let mut r = record("{}", "{}");
        r.request = Payload::from_bytes(Some("text/csv"), b"5.1,3.5,1.4,0.2");
        r.response.payload = Payload::from_bytes(Some("text/csv"), b"0.87");
        assert_eq!(
            choose(&Task::new(&r, route(TemplateKind::Auto, &[]))),
            TemplateKind::Json
        );
    }
}
