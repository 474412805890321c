//! Task templates: one renderer per kind of task — how the reviewer sees the input and the
//! model's answer, the answer controls, and how a submitted form becomes the answer. A new kind
//! (images with boxes, documents, audio…) is one more [`Template`] returned by [`template`].
//!
//! Everything is rendered with maud, which escapes every interpolated string: model output and
//! request bodies are attacker-controlled and never reach the page as markup.

mod auto;
mod boxes;
mod classify;
mod document;
mod entities;
mod json;
mod text;
mod translation;

use maud::{Markup, html};
use serde_json::Value;

use super::config::{RouteView, TemplateKind};
use super::prediction::{self, Choice};
use super::tabular;
use crate::record::{Encoding, Payload, ReviewRecord};

/// A submitted form's fields, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The reviewer's text from the `text` field, with `\n` line breaks.
    pub fn text(&self) -> Result<String, String> {
        let text = self.get("text").ok_or("The form has no text field.")?;
        // Browsers submit a textarea's line breaks as CRLF.
        Ok(text.replace("\r\n", "\n"))
    }
}

/// One item as a template sees it.
pub struct Task<'a> {
    pub record: &'a ReviewRecord,
    pub route: RouteView<'a>,
    /// The labels a classify task offers (configured, else the model's).
    pub choices: Vec<Choice>,
}

impl<'a> Task<'a> {
    pub fn new(record: &'a ReviewRecord, route: RouteView<'a>) -> Task<'a> {
        let choices = prediction::choices(&record.response.payload, route.labels);
        Task {
            record,
            route,
            choices,
        }
    }

    /// The template kind this item is shown with (`auto` resolved by what the model answered).
    pub fn kind(&self) -> TemplateKind {
        if self.route.template == TemplateKind::Auto
            && let Some(kind) = super::media::auto_kind(self.record)
        {
            return kind;
        }
        match self.route.template {
            TemplateKind::Auto => auto::choose(self),
            kind => kind,
        }
    }
}

/// A kind of task.
pub trait Template: Sync {
    /// The request as the reviewer reads it: its image or audio, else a row of features as a
    /// table, else its text fields.
    fn input(&self, task: &Task<'_>) -> Markup {
        super::media::input_view(task, None)
    }

    /// What the model answered, in the reviewer's terms.
    fn model_answer(&self, task: &Task<'_>) -> Markup;

    /// The answer controls inside the form; `draft` is a refused submission to show again.
    fn controls(&self, task: &Task<'_>, draft: Option<&Form>) -> Markup;

    /// The answer a submitted form carries, or what the reviewer must fix.
    fn answer(&self, task: &Task<'_>, form: &Form) -> Result<Value, String>;

    /// The keyboard hints shown under the controls.
    fn keys(&self) -> &'static [(&'static str, &'static str)];
}

/// The keyboard hints of a template answered in a text area (console.js: Ctrl+Enter submits
/// from it, Esc leaves it).
const TEXT_AREA_KEYS: &[(&str, &str)] = &[
    ("Ctrl+Enter", "submit"),
    ("Esc", "leave the text"),
    ("S", "skip"),
];

/// A request without media as the reviewer reads it: a row of features as a table (the whole
/// request below it), else its text fields.
pub fn request_view(task: &Task<'_>) -> Markup {
    match tabular::read(&task.record.request, task.route.features) {
        Some(table) => html! {
            (tabular::view(&table))
            details.raw {
                summary { "Whole request" }
                (payload_view(&task.record.request, "Request"))
            }
        },
        None => payload_view(&task.record.request, "Request"),
    }
}

/// The renderer of a (resolved) template kind.
pub fn template(kind: TemplateKind) -> &'static dyn Template {
    match kind {
        TemplateKind::Classify | TemplateKind::Auto => &classify::Classify,
        TemplateKind::Text => &text::Text,
        TemplateKind::Json => &json::Json,
        TemplateKind::Boxes => &boxes::Boxes,
        TemplateKind::Document => &document::Document,
        TemplateKind::Entities => &entities::Entities,
        TemplateKind::Translation => &translation::Translation,
    }
}

/// At most this many text fields of a JSON input are shown as text.
const MAX_TEXT_FIELDS: usize = 12;

/// A body as a reviewer reads it: its text fields as text, the JSON pretty-printed below, a
/// text body as text, a binary body described.
pub fn payload_view(payload: &Payload, what: &str) -> Markup {
    match payload.encoding {
        Encoding::Json => {
            let fields = payload.text_fields(MAX_TEXT_FIELDS);
            let pretty = serde_json::to_string_pretty(&payload.body).unwrap_or_default();
            html! {
                @for (path, text) in fields.iter().take(MAX_TEXT_FIELDS) {
                    figure.text-field {
                        @if !path.is_empty() { figcaption { (path) } }
                        div.text { (text) }
                    }
                }
                details.raw open[fields.is_empty()] {
                    summary { (what) " JSON" }
                    pre.json { code { (pretty) } }
                }
            }
        }
        Encoding::Utf8 => html! {
            div.text { (payload.body.as_str().unwrap_or_default()) }
        },
        Encoding::Base64 => {
            let length = payload.to_bytes().map_or(0, |b| b.len());
            html! {
                p.binary {
                    "Binary body, " (length) " bytes"
                    @if let Some(content_type) = &payload.content_type { " (" (content_type) ")" }
                    ": this template cannot show it."
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::record::{Reason, ResponsePayload};

    /// A low-confidence record of `/invocations`: a JSON `request` and the model's JSON
    /// `response`.
    pub(super) fn record(request: &str, response: &str) -> ReviewRecord {
        record_of(
            Payload::from_bytes(Some("application/json"), request.as_bytes()),
            response,
        )
    }

    /// The same with any request body (an image, a sound).
    pub(in crate::console) fn record_of(request: Payload, response: &str) -> ReviewRecord {
        ReviewRecord {
            id: "r-1".into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            route: "/invocations".into(),
            request,
            response: ResponsePayload {
                status: 200,
                payload: Payload::from_bytes(Some("application/json"), response.as_bytes()),
            },
            confidence: Some(0.4),
            reasons: vec![Reason::LowConfidence],
            sample_percent: 1.0,
            conditions: vec![],
            model: Default::default(),
            truncated: false,
            traceparent: None,
            redaction: None,
        }
    }

    pub(super) fn route(template: TemplateKind, labels: &[String]) -> RouteView<'_> {
        RouteView {
            template,
            instructions: "",
            labels,
            media: crate::console::config::MediaView {
                highlight_below: crate::console::config::DEFAULT_HIGHLIGHT_BELOW,
                ..Default::default()
            },
            features: &[],
        }
    }

    #[test]
    fn auto_picks_the_template_from_the_models_answer() {
        let hf = record(r#"{"inputs":"x"}"#, r#"[{"label":"a","score":0.5}]"#);
        assert_eq!(
            Task::new(&hf, route(TemplateKind::Auto, &[])).kind(),
            TemplateKind::Classify
        );
        let chat = record(
            r#"{"inputs":"x"}"#,
            r#"{"choices":[{"message":{"content":"hi"}}]}"#,
        );
        assert_eq!(
            Task::new(&chat, route(TemplateKind::Auto, &[])).kind(),
            TemplateKind::Text
        );
        let other = record(r#"{"inputs":"x"}"#, r#"{"boxes":[[1,2,3,4]]}"#);
        assert_eq!(
            Task::new(&other, route(TemplateKind::Auto, &[])).kind(),
            TemplateKind::Json
        );
        let labels = ["yes".to_owned()];
        assert_eq!(
            Task::new(&other, route(TemplateKind::Auto, &labels)).kind(),
            TemplateKind::Classify
        );
    }

    #[test]
    fn inputs_show_text_fields_as_text_and_escape_everything() {
        let payload = Payload::from_bytes(
            Some("application/json"),
            br#"{"inputs":"<script>alert(1)</script>","options":{"note":"<a href=\"javascript:x\">x</a>"},"n":3}"#,
        );
        let html = payload_view(&payload, "Request").into_string();
        assert!(html.contains("<figcaption>inputs</figcaption>"), "{html}");
        assert!(
            html.contains("<figcaption>options.note</figcaption>"),
            "{html}"
        );
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            !html.contains("<script>") && !html.contains("<a "),
            "{html}"
        );
        let binary = Payload::from_bytes(Some("image/png"), &[0x89, 0xff, 0x00]);
        assert!(
            payload_view(&binary, "Request")
                .into_string()
                .contains("3 bytes")
        );
    }
}
