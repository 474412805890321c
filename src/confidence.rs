//! Reading one confidence in [0, 1] from a model response (presets, `auto`, JMESPath).
//!
//! A response body is parsed once into a [`Document`] (JSON, JSON Lines, server-sent events or
//! plain text such as CSV) and a preset reads it. A batch yields one confidence per instance and
//! the response's confidence is the lowest of them; a lone binary probability `p` counts as
//! `max(p, 1 − p)`. Anything that is not a probability where one is expected (labels, logits,
//! regression values, NaN) is "no confidence" rather than a guess: the result is always a finite
//! number in [0, 1], or `None`.

mod config;
mod jmes;
mod presets;
#[cfg(test)]
pub(crate) mod tests;
mod typed;

use serde_json::Value;

use crate::settings::{Problem, quoted};

pub use self::config::{Aggregate, ConfidenceConfig, Preset, Scale};
pub use self::jmes::JmesReader;

/// A response body, parsed once for the extractor and the conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum Document<'a> {
    /// One JSON value.
    Json(Value),
    /// Several JSON values, one per line (SageMaker `application/jsonlines`).
    JsonLines(Vec<Value>),
    /// The JSON `data:` payloads of a server-sent event stream, up to `data: [DONE]`.
    Sse(Vec<Value>),
    /// Text that is not JSON: CSV or a bare number (SageMaker XGBoost answers `text/csv`).
    Text(&'a str),
    /// Nothing readable (binary, empty, truncated JSON).
    Unreadable,
}

impl<'a> Document<'a> {
    /// Parses `body` as its content type says, falling back on what the bytes look like: servers
    /// often label JSON `text/plain` and SSE streams arrive without their content type.
    pub fn parse(content_type: Option<&str>, body: &'a [u8]) -> Document<'a> {
        let essence = essence(content_type);
        let csv = essence.eq_ignore_ascii_case("text/csv");
        let body = trim_start(body);
        if body.is_empty() {
            return Document::Unreadable;
        }
        if essence.eq_ignore_ascii_case("text/event-stream") || looks_like_sse(body) {
            return parse_sse(body);
        }
        if !csv && let Ok(value) = serde_json::from_slice::<Value>(body) {
            return Document::Json(value);
        }
        let Ok(text) = std::str::from_utf8(body) else {
            return Document::Unreadable;
        };
        if !csv && let Some(lines) = parse_json_lines(text) {
            return Document::JsonLines(lines);
        }
        Document::Text(text)
    }

    /// The JSON value of the response, if it was one (conditions read Rekognition/Textract
    /// fields from it).
    pub fn json(&self) -> Option<&Value> {
        match self {
            Document::Json(value) => Some(value),
            _ => None,
        }
    }
}

/// The media type of a `Content-Type` value, without its parameters (any letter case).
fn essence(content_type: Option<&str>) -> &str {
    content_type
        .and_then(|ct| ct.split(';').next())
        .map_or("", str::trim)
}

fn trim_start(body: &[u8]) -> &[u8] {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    &body[start..]
}

fn looks_like_sse(body: &[u8]) -> bool {
    body.starts_with(b"data:") || body.starts_with(b"event:") || body.starts_with(b"id:")
}

/// Collects each event's `data:` lines (joined by `\n` as the SSE spec says) and keeps those
/// that parse as JSON; `[DONE]` (OpenAI's end marker) ends the stream.
fn parse_sse(body: &[u8]) -> Document<'static> {
    let text = String::from_utf8_lossy(body);
    let mut events = Vec::new();
    let mut data = String::new();
    let flush = |data: &mut String, events: &mut Vec<Value>| -> bool {
        let done = data.trim() == "[DONE]";
        if !done
            && !data.is_empty()
            && let Ok(value) = serde_json::from_str::<Value>(data)
        {
            events.push(value);
        }
        data.clear();
        done
    };
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            if flush(&mut data, &mut events) {
                return Document::Sse(events);
            }
        } else if let Some(value) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(value.strip_prefix(' ').unwrap_or(value));
        }
    }
    flush(&mut data, &mut events);
    Document::Sse(events)
}

/// Two or more non-empty lines, each a JSON value.
fn parse_json_lines(text: &str) -> Option<Vec<Value>> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() < 2 {
        return None;
    }
    lines
        .into_iter()
        .map(|line| serde_json::from_str::<Value>(line).ok())
        .collect()
}

/// Reads a confidence from responses, as one route's `[confidence]` settings say.
#[derive(Debug)]
pub struct Extractor {
    preset: Preset,
    jmes: Option<JmesReader>,
}

impl Extractor {
    /// Compiles the settings; fails only on a missing, invalid or unused JMESPath
    /// expression (the problem's key is relative to `[confidence]`).
    pub fn new(config: &ConfidenceConfig) -> Result<Extractor, Problem> {
        let jmes = match (config.preset, config.expression.as_deref()) {
            (Preset::Jmespath, None | Some("")) => {
                return Err(Problem::new(
                    "expression",
                    "\"\"",
                    "required when preset = \"jmespath\"",
                ));
            }
            (Preset::Jmespath, Some(expression)) => Some(
                JmesReader::new(expression, config.scale, config.aggregate)
                    .map_err(|message| Problem::new("expression", quoted(expression), message))?,
            ),
            (_, Some(expression)) => {
                return Err(Problem::new(
                    "expression",
                    quoted(expression),
                    "only used with preset = \"jmespath\"",
                ));
            }
            (_, None) => None,
        };
        Ok(Extractor {
            preset: config.preset,
            jmes,
        })
    }

    /// A preset extractor (not `jmespath`, which needs an expression).
    #[cfg(any(test, feature = "test-util"))]
    pub fn preset(preset: Preset) -> Extractor {
        debug_assert!(
            preset != Preset::Jmespath,
            "use Extractor::new for jmespath"
        );
        Extractor { preset, jmes: None }
    }

    /// Parses `body` and reads its confidence.
    #[cfg(any(test, feature = "test-util"))]
    pub fn extract(&self, content_type: Option<&str>, body: &[u8]) -> Option<f64> {
        self.read(&Document::parse(content_type, body))
    }

    /// The confidence of a response in one of the commonest shapes (Hugging Face text
    /// classification), read with a typed, borrowing parse that builds no [`Document`];
    /// `None` when the body is not one of them and must be parsed. Where it answers it
    /// answers as [`Extractor::extract`] does, in a third of the time.
    pub fn read_quick(&self, content_type: Option<&str>, body: &[u8]) -> Option<Option<f64>> {
        if !matches!(self.preset, Preset::Auto | Preset::Huggingface) {
            return None;
        }
        let essence = essence(content_type);
        if essence.eq_ignore_ascii_case("text/csv")
            || essence.eq_ignore_ascii_case("text/event-stream")
        {
            return None;
        }
        typed::label_scores(trim_start(body)).map(|c| c.and_then(unit))
    }

    /// The confidence of an already parsed response: in [0, 1], or `None`.
    pub fn read(&self, doc: &Document<'_>) -> Option<f64> {
        let preset = match self.preset {
            Preset::Auto => detect(doc)?,
            preset => preset,
        };
        let value = match preset {
            Preset::Jmespath => self.jmes.as_ref()?.read(doc),
            preset => presets::read(preset, doc),
        };
        value.and_then(unit)
    }
}

/// Which preset `auto` reads a document with: the first whose telltale fields are present.
pub fn detect(doc: &Document<'_>) -> Option<Preset> {
    match doc {
        Document::Sse(events) => {
            if events.iter().any(|e| e.get("choices").is_some()) {
                Some(Preset::Openai)
            } else if events.iter().any(|e| e.get("token").is_some()) {
                Some(Preset::Huggingface)
            } else {
                None
            }
        }
        Document::JsonLines(_) | Document::Text(_) => Some(Preset::Sagemaker),
        Document::Json(Value::Number(_)) => Some(Preset::Sagemaker),
        Document::Json(Value::Object(o)) => detect_object(o),
        Document::Json(Value::Array(items)) => detect_array(items),
        Document::Json(_) | Document::Unreadable => None,
    }
}

fn detect_object(o: &serde_json::Map<String, Value>) -> Option<Preset> {
    let has = |key: &str| o.contains_key(key);
    let items_have = |key: &str, field: &str| {
        o.get(key)
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|item| item.get(field).is_some()))
    };
    if has("choices") {
        Some(Preset::Openai)
    } else if has("ModerationLabels") || has("CustomLabels") || items_have("Labels", "Confidence") {
        Some(Preset::Rekognition)
    } else if has("Blocks") {
        Some(Preset::Textract)
    } else if [
        "SentimentScore",
        "Languages",
        "Entities",
        "KeyPhrases",
        "Classes",
    ]
    .iter()
    .any(|k| has(k))
        || items_have("Labels", "Score")
        || has("ResultList")
    {
        Some(Preset::Comprehend)
    } else if items_have("outputs", "data") {
        Some(Preset::KserveV2)
    } else if has("predictions") {
        let objects = o
            .get("predictions")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(Value::is_object));
        Some(if objects {
            Preset::Sagemaker
        } else {
            Preset::Tfserving
        })
    } else if has("prediction")
        || has("predicted_label")
        || has("probabilities")
        || has("probability")
    {
        Some(Preset::Sagemaker)
    } else if has("outputs") || has("result") {
        Some(Preset::Tfserving)
    } else if (has("labels") && has("scores"))
        || (has("answer") && has("score"))
        || has("generated_text")
    {
        Some(Preset::Huggingface)
    } else {
        None
    }
}

fn detect_array(items: &[Value]) -> Option<Preset> {
    let first = items.first()?;
    let has = |key: &str| first.get(key).is_some();
    let huggingface = first.is_array()
        || (has("label") && has("score"))
        || has("entity")
        || has("entity_group")
        || has("generated_text")
        || (has("labels") && has("scores"));
    if huggingface {
        Some(Preset::Huggingface)
    } else if has("prob") {
        Some(Preset::Sagemaker)
    } else {
        None
    }
}

/// Tolerance for probabilities a float32 server printed as `1.0000001` or `-1e-9`.
const EPSILON: f64 = 1e-6;

/// A probability as read: finite and within [0, 1] (a hair outside is rounding, clamped).
pub(crate) fn unit(x: f64) -> Option<f64> {
    (x.is_finite() && (-EPSILON..=1.0 + EPSILON).contains(&x)).then(|| x.clamp(0.0, 1.0))
}

/// The lowest of the instances' confidences that could be read.
pub(crate) fn min_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    values
        .into_iter()
        .flatten()
        .filter_map(unit)
        .reduce(f64::min)
}

/// A lone probability of the positive class: the model is as sure as the likelier side.
pub(crate) fn binary(p: f64) -> Option<f64> {
    unit(p).map(|p| p.max(1.0 - p))
}
