//! `entities`: the source text with each entity span the model found highlighted (Comprehend
//! DetectEntities, Hugging Face token classification); the reviewer changes a span's label or
//! removes it. Answers `{"entities": [{"start", "end", "text", "label"}]}` with code-point
//! offsets into the source text (what Comprehend and Python count); a span the console could
//! not place in the text keeps the model's numbers and says `"placed": false`.

mod spans;

use maud::{Markup, html};
use serde_json::{Value, json};

use super::{Form, Task, Template, payload_view};
use crate::prediction;
use crate::record::{Encoding, Payload};

pub use self::spans::read as read_spans;
use self::spans::{Piece, Placed};

pub struct Entities;

/// Highlight colours: a label always gets the same one of these classes (`hue-0`…).
const HUES: u64 = 8;

/// The source text of a request: Comprehend's `Text`, Hugging Face's `inputs`, else the first
/// text field of a JSON body, or a text body.
pub fn source_text(request: &Payload) -> Option<String> {
    match request.encoding {
        Encoding::Json => ["Text", "inputs", "text"]
            .iter()
            .find_map(|key| request.body.get(key).and_then(Value::as_str))
            .map(str::to_owned)
            .or_else(|| request.text_fields(1).into_iter().next().map(|(_, text)| text)),
        Encoding::Utf8 => request.body.as_str().map(str::to_owned),
        Encoding::Base64 => None,
    }
}

/// An item's text and its spans, placed.
struct Marked {
    text: Option<String>,
    placed: Vec<Placed>,
    /// The labels a span can take: the configured ones, then the model's.
    options: Vec<String>,
}

impl Marked {
    fn of(task: &Task<'_>) -> Marked {
        let text = source_text(&task.record.request);
        let spans = prediction::json_of(&task.record.response.payload)
            .as_ref()
            .and_then(spans::read)
            .unwrap_or_default();
        let mut options: Vec<String> = task.route.labels.to_vec();
        for span in &spans {
            if !options.contains(&span.label) {
                options.push(span.label.clone());
            }
        }
        let placed = spans::place(text.as_deref(), spans);
        Marked {
            text,
            placed,
            options,
        }
    }

    /// What the span covers: its place in the text, else what the model said.
    fn covered(&self, p: &Placed) -> String {
        match (&p.at, &self.text) {
            (Ok(range), Some(text)) => text[range.clone()].to_owned(),
            _ => p.span.text.clone().unwrap_or_default(),
        }
    }
}

fn hue(label: &str) -> String {
    format!("hue-{}", xxhash_rust::xxh3::xxh3_64(label.as_bytes()) % HUES)
}

fn field(name: &str, p: &Placed) -> String {
    format!("{name}.{}", p.index)
}

impl Template for Entities {
    fn input(&self, task: &Task<'_>) -> Markup {
        let marked = Marked::of(task);
        let unplaced: Vec<&Placed> = marked.placed.iter().filter(|p| p.at.is_err()).collect();
        html! {
            @match &marked.text {
                Some(text) => div.text.entities {
                    @for piece in spans::pieces(text, &marked.placed) {
                        @match piece {
                            Piece::Plain(plain) => (plain),
                            Piece::Span(covered, i) => {
                                @let p = &marked.placed[i];
                                mark class={ "entity " (hue(&p.span.label)) } id={ "span-" (p.index) }
                                    title=(p.span.label) {
                                    (covered)
                                    span.tag { (p.span.label) }
                                }
                            }
                        }
                    }
                },
                None => p.muted { "The request holds no text this console can read." },
            }
            @if !unplaced.is_empty() {
                div.unplaced {
                    h3 { "Not shown in the text" }
                    ul {
                        @for p in &unplaced {
                            li id={ "span-" (p.index) } {
                                q { (marked.covered(p)) } " "
                                span class={ "tag " (hue(&p.span.label)) } { (p.span.label) }
                                " " span.muted { "(" (p.at.clone().err().map_or("", |why| why.as_str())) ")" }
                            }
                        }
                    }
                }
            }
            details.raw {
                summary { "Whole request" }
                (payload_view(&task.record.request, "Request"))
            }
        }
    }

    fn model_answer(&self, task: &Task<'_>) -> Markup {
        let marked = Marked::of(task);
        let count = marked.placed.len();
        // The least sure span is the one to look at first (each span's score is in its row).
        let least = marked
            .placed
            .iter()
            .filter_map(|p| p.span.score.map(|score| (score, p)))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        html! {
            @if count == 0 {
                p.muted { "The model found no entity this console can read." }
            } @else {
                p.model-label { (count) " entit" @if count == 1 { "y" } @else { "ies" } }
                @if let Some((score, p)) = least {
                    p.least {
                        "Least sure: " q { (marked.covered(p)) } " as "
                        span class={ "tag " (hue(&p.span.label)) } { (p.span.label) }
                        " " span.score { (format!("{score:.2}")) }
                    }
                }
            }
        }
    }

    fn controls(&self, task: &Task<'_>, draft: Option<&Form>) -> Markup {
        let marked = Marked::of(task);
        html! {
            fieldset.spans {
                legend { "Entities: relabel or remove" }
                @if marked.placed.is_empty() { p.muted { "Nothing to correct: submit to confirm there is no entity." } }
                @for p in &marked.placed {
                    @let chosen = draft.and_then(|f| f.get(&field("label", p))).unwrap_or(&p.span.label);
                    @let removed = draft.is_some_and(|f| f.get(&field("remove", p)).is_some());
                    div.span-row {
                        span.covered title=(marked.covered(p)) { (marked.covered(p)) }
                        span.score { @if let Some(score) = p.span.score { (format!("{score:.2}")) } }
                        select name=(field("label", p)) data-span=(p.index) aria-label="Label" {
                            @for option in &marked.options {
                                option value=(option) selected[option == chosen] { (option) }
                            }
                        }
                        label.remove {
                            input type="checkbox" name=(field("remove", p)) value="1" data-span=(p.index) checked[removed];
                            " Remove"
                        }
                    }
                }
            }
        }
    }

    fn answer(&self, task: &Task<'_>, form: &Form) -> Result<Value, String> {
        let marked = Marked::of(task);
        let mut entities = Vec::new();
        for p in &marked.placed {
            if form.get(&field("remove", p)).is_some() {
                continue;
            }
            // One of the offered labels, exactly as offered (the model's may be long or padded).
            let label = form
                .get(&field("label", p))
                .unwrap_or(p.span.label.as_str());
            if !marked.options.iter().any(|o| o == label) {
                return Err(format!("{label:?} is not one of the labels."));
            }
            let entity = match (&p.at, &marked.text) {
                (Ok(range), Some(text)) => {
                    let (start, end) = spans::char_offsets(text, range);
                    json!({"start": start, "end": end, "text": &text[range.clone()], "label": label})
                }
                _ => json!({
                    "start": p.span.start,
                    "end": p.span.end,
                    "text": p.span.text,
                    "label": label,
                    "placed": false,
                }),
            };
            entities.push(entity);
        }
        Ok(json!({ "entities": entities }))
    }

    fn keys(&self) -> &'static [(&'static str, &'static str)] {
        &[("Enter", "submit"), ("S", "skip")]
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{record, route};
    use super::*;
    use crate::console::config::TemplateKind;

    const TEXT: &str = r#"{"Text":"Zoë <b>Smith</b> flew to Paris 😀 on Monday","LanguageCode":"en"}"#;
    const COMPREHEND: &str = r#"{"Entities":[
        {"BeginOffset":4,"EndOffset":16,"Type":"PERSON","Score":0.91,"Text":"<b>Smith</b>"},
        {"BeginOffset":25,"EndOffset":30,"Type":"LOCATION","Score":0.42,"Text":"Paris"},
        {"BeginOffset":36,"EndOffset":42,"Type":"<i>DATE</i>","Score":0.8,"Text":"Monday"},
        {"BeginOffset":90,"EndOffset":95,"Type":"OTHER","Score":0.3,"Text":"ghost"}
    ]}"#;

    fn form(pairs: &[(&str, &str)]) -> Form {
        Form(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn spans_are_highlighted_escaped_and_the_unplaced_listed() {
        let r = record(TEXT, COMPREHEND);
        let labels = ["PERSON".to_owned(), "ORGANIZATION".to_owned()];
        let task = Task::new(&r, route(TemplateKind::Entities, &labels));
        let html = Entities.input(&task).into_string();
        assert!(
            html.contains(">&lt;b&gt;Smith&lt;/b&gt;<span class=\"tag\">PERSON</span></mark>"),
            "{html}"
        );
        assert!(html.contains(">Paris<span class=\"tag\">LOCATION</span>"), "{html}");
        assert!(html.contains("&lt;i&gt;DATE&lt;/i&gt;"), "{html}");
        assert!(!html.contains("<b>") && !html.contains("<i>"), "{html}");
        assert!(html.contains("ghost") && html.contains("beyond the end"), "{html}");
        // The configured labels first, then the model's.
        let controls = Entities.controls(&task, None).into_string();
        let person = controls.find("value=\"PERSON\"").unwrap();
        let organization = controls.find("value=\"ORGANIZATION\"").unwrap();
        let location = controls.find("value=\"LOCATION\"").unwrap();
        assert!(person < organization && organization < location, "{controls}");
    }

    #[test]
    fn the_answer_carries_the_kept_spans_with_their_labels() {
        let r = record(TEXT, COMPREHEND);
        let task = Task::new(&r, route(TemplateKind::Entities, &[]));
        let answer = Entities
            .answer(
                &task,
                &form(&[("label.1", "PERSON"), ("remove.2", "1"), ("remove.3", "1")]),
            )
            .unwrap();
        assert_eq!(
            answer,
            json!({"entities": [
                {"start": 4, "end": 16, "text": "<b>Smith</b>", "label": "PERSON"},
                {"start": 25, "end": 30, "text": "Paris", "label": "PERSON"},
            ]})
        );
        // An unplaced span is carried as the model gave it.
        let answer = Entities.answer(&task, &form(&[])).unwrap();
        assert_eq!(
            answer["entities"][3],
            json!({"start": 90, "end": 95, "text": "ghost", "label": "OTHER", "placed": false})
        );
        let refused = Entities.answer(&task, &form(&[("label.0", "MADE-UP")]));
        assert!(refused.unwrap_err().contains("not one of the labels"));
        // The model's own label is an answer however long it is.
        let long = "L".repeat(300);
        let r = record(
            r#"{"inputs":"Jane"}"#,
            &format!(r#"[{{"entity":"{long}","score":0.5,"word":"Jane","start":0,"end":4}}]"#),
        );
        let task = Task::new(&r, route(TemplateKind::Entities, &[]));
        assert_eq!(
            Entities.answer(&task, &form(&[]))
                .unwrap()["entities"][0]["label"],
            json!(long)
        );
    }

    #[test]
    fn hugging_face_spans_in_an_inputs_string() {
        let r = record(
            r#"{"inputs":"My name is Wolfgang and I live in Berlin"}"#,
            r#"[{"entity_group":"PER","score":0.99,"word":"Wolfgang","start":11,"end":19},
                {"entity_group":"LOC","score":0.99,"word":"Berlin","start":34,"end":40}]"#,
        );
        let task = Task::new(&r, route(TemplateKind::Entities, &[]));
        assert_eq!(
            Entities.answer(&task, &form(&[("label.1", "PER")])).unwrap(),
            json!({"entities": [
                {"start": 11, "end": 19, "text": "Wolfgang", "label": "PER"},
                {"start": 34, "end": 40, "text": "Berlin", "label": "PER"},
            ]})
        );
    }
}
