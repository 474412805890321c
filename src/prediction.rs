//! Reading the model's answer (pure): the labels it chose between with their scores, the text
//! it generated, and its JSON — for the console's task page, the decision's label strata and
//! the joiner's comparison with the reviewers. The shapes are those `confidence::presets`
//! reads; anything else falls back to the configured labels or the raw body.

use std::collections::HashMap;

use serde_json::Value;

use crate::record::{Encoding, Payload};

/// One label the reviewer can choose, with the model's score when it gave one.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub label: String,
    pub score: Option<f64>,
}

/// The labels to offer: the configured ones (in their order, scored where the model scored
/// them), else the model's own (best first). Empty when neither names any.
pub fn choices(response: &Payload, configured: &[String]) -> Vec<Choice> {
    let body = json_of(response);
    let named = body.as_ref().map(named_scores).unwrap_or_default();
    if configured.is_empty() {
        let mut named = named;
        named.sort_by(|a, b| b.score.unwrap_or(-1.0).total_cmp(&a.score.unwrap_or(-1.0)));
        return named;
    }
    let by_index = body
        .as_ref()
        .and_then(|b| indexed_scores(b, configured.len()));
    configured
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let named_score = named
                .iter()
                .find(|c| c.label == *label)
                .or_else(|| named.iter().find(|c| c.label.eq_ignore_ascii_case(label)))
                .and_then(|c| c.score);
            let score = named_score.or_else(|| by_index.as_ref().map(|scores| scores[i]));
            Choice {
                label: label.clone(),
                score,
            }
        })
        .collect()
}

/// The label with the highest score: pre-selected on the task page.
pub fn top(choices: &[Choice]) -> Option<&str> {
    choices
        .iter()
        .filter_map(|c| c.score.map(|s| (s, c.label.as_str())))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, label)| label)
}

/// The label a classifier answered: the best scored of those it named (Hugging Face, zero-shot,
/// Comprehend); `None` for an unnamed probability vector or any other shape.
pub fn top_label(body: &Value) -> Option<String> {
    top(&named_scores(body)).map(str::to_owned)
}

/// The model's answer, as a reviewer's is compared with it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelAnswer {
    /// A classifier's top label.
    Label(String),
    /// A generative model's text (or a text body as it is).
    Text(String),
}

impl ModelAnswer {
    pub fn as_str(&self) -> &str {
        match self {
            ModelAnswer::Label(s) | ModelAnswer::Text(s) => s,
        }
    }
}

/// The model's answer in a response: its top label when it names labels, else its text.
pub fn model_answer(response: &Payload) -> Option<ModelAnswer> {
    if let Some(label) = json_of(response).as_ref().and_then(top_label) {
        return Some(ModelAnswer::Label(label));
    }
    text(response).map(ModelAnswer::Text)
}

/// The text a generative model answered (chat or completion, Hugging Face generation, a
/// streamed answer), or a text body as it is.
pub fn text(response: &Payload) -> Option<String> {
    match response.encoding {
        Encoding::Json => generated_text(&response.body),
        Encoding::Utf8 => {
            let body = response.body.as_str()?;
            streamed_text(body).or_else(|| Some(body.to_owned()))
        }
        Encoding::Base64 => None,
    }
}

/// The response as JSON when it is JSON.
pub fn json_of(payload: &Payload) -> Option<Value> {
    match payload.encoding {
        Encoding::Json => Some(payload.body.clone()),
        // A JSON body under another content type.
        Encoding::Utf8 => serde_json::from_str(payload.body.as_str()?).ok(),
        Encoding::Base64 => None,
    }
}

/// Labels the model named, with their scores.
fn named_scores(body: &Value) -> Vec<Choice> {
    match body {
        // [[{label, score}]]: a batch; the first input's labels.
        Value::Array(items) if items.first().is_some_and(Value::is_array) => {
            named_scores(&items[0])
        }
        Value::Array(items) if items.iter().all(|i| i.get("label").is_some()) => items
            .iter()
            .filter_map(|i| choice(i.get("label")?, i.get("score")))
            .collect(),
        // Zero-shot for several inputs: the first.
        Value::Array(items) if items.first().is_some_and(|i| i.get("labels").is_some()) => {
            named_scores(&items[0])
        }
        Value::Object(o) => {
            if let (Some(Value::Array(labels)), scores) = (o.get("labels"), o.get("scores")) {
                // Zero-shot classification: {"labels": […], "scores": […]}.
                let scores = scores.and_then(Value::as_array);
                return labels
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| choice(l, scores.and_then(|s| s.get(i))))
                    .collect();
            }
            if let Some(Value::Object(sentiment)) = o.get("SentimentScore") {
                // Comprehend: the labels are the upper-case sentiment names.
                return sentiment
                    .iter()
                    .filter_map(|(name, score)| {
                        choice(&Value::String(name.to_ascii_uppercase()), Some(score))
                    })
                    .collect();
            }
            if let Some(Value::Array(classes)) = o.get("Classes").or_else(|| o.get("Labels")) {
                // Comprehend custom classification: [{"Name", "Score"}].
                return classes
                    .iter()
                    .filter_map(|c| choice(c.get("Name")?, c.get("Score")))
                    .collect();
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

fn choice(label: &Value, score: Option<&Value>) -> Option<Choice> {
    let label = match label {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    Some(Choice {
        label,
        score: score.and_then(Value::as_f64).filter(|s| s.is_finite()),
    })
}

/// A probability vector of exactly `count` numbers (TF Serving, KServe v1 and v2), scoring
/// configured labels by position.
fn indexed_scores(body: &Value, count: usize) -> Option<Vec<f64>> {
    let row = if let Some(predictions) = body.get("predictions").and_then(Value::as_array) {
        match predictions.first() {
            Some(Value::Array(row)) => row.clone(),
            _ => predictions.clone(),
        }
    } else {
        let output = body.get("outputs")?.as_array()?.first()?;
        output.get("data")?.as_array()?.clone()
    };
    let scores: Vec<f64> = row.iter().filter_map(Value::as_f64).collect();
    (scores.len() == count && row.len() == count).then_some(scores)
}

fn generated_text(body: &Value) -> Option<String> {
    if let Some(choice) = body.get("choices").and_then(|c| c.get(0)) {
        let content = choice
            .get("message")
            .and_then(|m| m.get("content"))
            .or_else(|| choice.get("text"));
        return content.and_then(Value::as_str).map(str::to_owned);
    }
    // Amazon Transcribe's transcript.
    if let Some(transcript) = body.pointer("/results/transcripts/0/transcript") {
        return transcript.as_str().map(str::to_owned);
    }
    let first = match body {
        Value::Array(items) => items.first()?,
        other => other,
    };
    // Whisper (OpenAI's transcription API, Hugging Face's speech recognition): {"text": …}.
    if let Some(Value::String(text)) = first.get("text") {
        return Some(text.clone());
    }
    // Hugging Face generation, summaries and translations; Amazon Translate.
    ["generated_text", "summary_text", "translation_text", "TranslatedText"]
        .iter()
        .find_map(|key| first.get(key).and_then(Value::as_str))
        .map(str::to_owned)
}

/// Server-sent events of a streamed answer (OpenAI deltas or TGI tokens), joined.
fn streamed_text(body: &str) -> Option<String> {
    let mut text = String::new();
    let mut events = 0;
    for data in body.lines().filter_map(|l| l.strip_prefix("data:")) {
        let Ok(event) = serde_json::from_str::<Value>(data.trim()) else {
            continue;
        };
        events += 1;
        let piece = event
            .pointer("/choices/0/delta/content")
            .or_else(|| event.pointer("/choices/0/text"))
            .or_else(|| event.pointer("/token/text"));
        if let Some(piece) = piece.and_then(Value::as_str) {
            text.push_str(piece);
        }
    }
    (events > 0).then_some(text)
}

/// A Textract `AnalyzeDocument` answer's blocks, joined by their relationships: what both the
/// A2I form checks and the console's document template read.
pub struct TextractBlocks<'a> {
    blocks: &'a [Value],
    by_id: HashMap<&'a str, &'a Value>,
}

impl<'a> TextractBlocks<'a> {
    /// `None` unless the answer has `Blocks`.
    pub fn of(response: &'a Value) -> Option<TextractBlocks<'a>> {
        let blocks = response.get("Blocks")?.as_array()?;
        let by_id = blocks
            .iter()
            .filter_map(|b| Some((b.get("Id")?.as_str()?, b)))
            .collect();
        Some(TextractBlocks { blocks, by_id })
    }

    /// The form's keys: the KEY_VALUE_SET blocks of entity type KEY, in the answer's order.
    pub fn keys(&self) -> impl Iterator<Item = &'a Value> + 'a {
        self.blocks.iter().filter(|b| {
            b.get("BlockType").and_then(Value::as_str) == Some("KEY_VALUE_SET")
                && b.get("EntityTypes")
                    .and_then(Value::as_array)
                    .is_some_and(|types| types.iter().any(|t| t == "KEY"))
        })
    }

    /// The blocks `block` names under the relationship `kind` (`VALUE`, `CHILD`), in its order.
    pub fn related(&self, block: &Value, kind: &str) -> Vec<&'a Value> {
        block
            .get("Relationships")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| r.get("Type").and_then(Value::as_str) == Some(kind))
            .filter_map(|r| r.get("Ids").and_then(Value::as_array))
            .flatten()
            .filter_map(|id| self.by_id.get(id.as_str()?).copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Payload {
        Payload::from_bytes(Some("application/json"), text.as_bytes())
    }

    fn labels(choices: &[Choice]) -> Vec<&str> {
        choices.iter().map(|c| c.label.as_str()).collect()
    }

    #[test]
    fn hugging_face_labels_best_first() {
        let response =
            json(r#"[{"label":"billing","score":0.2},{"label":"shipping","score":0.7}]"#);
        let got = choices(&response, &[]);
        assert_eq!(labels(&got), ["shipping", "billing"]);
        assert_eq!(top(&got), Some("shipping"));
        let batch = json(
            r#"[[{"label":"a","score":0.1},{"label":"b","score":0.9}],[{"label":"c","score":1}]]"#,
        );
        assert_eq!(labels(&choices(&batch, &[])), ["b", "a"]);
        let zero_shot = json(r#"{"sequence":"x","labels":["urgent","later"],"scores":[0.3,0.7]}"#);
        assert_eq!(top(&choices(&zero_shot, &[])), Some("later"));
    }

    #[test]
    fn configured_labels_keep_their_order_and_take_the_models_scores() {
        let configured = [
            "POSITIVE".to_owned(),
            "NEGATIVE".to_owned(),
            "OTHER".to_owned(),
        ];
        let response =
            json(r#"[{"label":"negative","score":0.8},{"label":"positive","score":0.2}]"#);
        let got = choices(&response, &configured);
        assert_eq!(labels(&got), ["POSITIVE", "NEGATIVE", "OTHER"]);
        assert_eq!(got[1].score, Some(0.8));
        assert_eq!(got[2].score, None);
        assert_eq!(top(&got), Some("NEGATIVE"));
        // A bare probability vector (KServe, TF Serving) scores the labels by position.
        let kserve = json(r#"{"predictions": [[0.1, 0.6, 0.3]]}"#);
        assert_eq!(top(&choices(&kserve, &configured)), Some("NEGATIVE"));
        let v2 = json(
            r#"{"outputs":[{"name":"p","shape":[1,3],"datatype":"FP32","data":[0.7,0.2,0.1]}]}"#,
        );
        assert_eq!(top(&choices(&v2, &configured)), Some("POSITIVE"));
        // The wrong length scores nothing rather than the wrong labels.
        let short = json(r#"{"predictions": [[0.4, 0.6]]}"#);
        assert_eq!(top(&choices(&short, &configured)), None);
    }

    #[test]
    fn comprehend_sentiment_and_classes() {
        let sentiment = json(
            r#"{"Sentiment":"NEGATIVE","SentimentScore":{"Positive":0.1,"Negative":0.8,"Neutral":0.05,"Mixed":0.05}}"#,
        );
        assert_eq!(top(&choices(&sentiment, &[])), Some("NEGATIVE"));
        let classes =
            json(r#"{"Classes":[{"Name":"spam","Score":0.4},{"Name":"ham","Score":0.6}]}"#);
        assert_eq!(labels(&choices(&classes, &[])), ["ham", "spam"]);
    }

    #[test]
    fn unknown_shapes_offer_nothing() {
        assert!(choices(&json(r#"{"result": 3}"#), &[]).is_empty());
        let binary = Payload::from_bytes(Some("image/png"), &[0xff, 0x00, 0x9f]);
        assert!(choices(&binary, &[]).is_empty());
        assert_eq!(text(&binary), None);
    }

    #[test]
    fn transcripts_are_text() {
        let transcribe = json(
            r#"{"jobName":"j","results":{"transcripts":[{"transcript":"hello there"}],"items":[]}}"#,
        );
        assert_eq!(text(&transcribe).as_deref(), Some("hello there"));
        let whisper = json(r#"{"text":" Hello world.","chunks":[]}"#);
        assert_eq!(text(&whisper).as_deref(), Some(" Hello world."));
    }

    #[test]
    fn generated_text_from_every_family() {
        let chat =
            json(r#"{"choices":[{"message":{"role":"assistant","content":"Hello there"}}]}"#);
        assert_eq!(text(&chat).as_deref(), Some("Hello there"));
        let completion = json(r#"{"choices":[{"text":"once upon"}]}"#);
        assert_eq!(text(&completion).as_deref(), Some("once upon"));
        let hf = json(r#"[{"generated_text":"a poem"}]"#);
        assert_eq!(text(&hf).as_deref(), Some("a poem"));
        let translate = json(r#"{"TranslatedText":"Hallo","TargetLanguageCode":"de"}"#);
        assert_eq!(text(&translate).as_deref(), Some("Hallo"));
        let sse = Payload::from_bytes(
            Some("text/event-stream"),
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n",
        );
        assert_eq!(text(&sse).as_deref(), Some("Hello"));
        let tgi = Payload::from_bytes(
            Some("text/event-stream"),
            b"data:{\"token\":{\"text\":\"Hi\"}}\n\ndata:{\"token\":{\"text\":\"!\"}}\n\n",
        );
        assert_eq!(text(&tgi).as_deref(), Some("Hi!"));
        let plain = Payload::from_bytes(Some("text/plain"), b"just text");
        assert_eq!(text(&plain).as_deref(), Some("just text"));
    }
}
