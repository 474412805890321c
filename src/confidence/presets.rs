//! The presets: how each model server family writes its predictions, and where the confidence
//! is in them. Each reader returns the response's confidence (the minimum over its instances)
//! or `None` when the shape is not the one it knows.

use serde_json::{Map, Value};

use super::Preset;
use super::{Document, binary, min_of, unit};

pub(super) fn read(preset: Preset, doc: &Document<'_>) -> Option<f64> {
    match preset {
        Preset::Huggingface => huggingface(doc),
        Preset::Sagemaker => sagemaker(doc),
        Preset::Tfserving | Preset::KserveV1 => tfserving(doc),
        Preset::KserveV2 => kserve_v2(doc),
        Preset::Openai => openai(doc),
        Preset::Rekognition => rekognition(doc),
        Preset::Textract => textract(doc),
        Preset::Comprehend => comprehend(doc),
        Preset::Auto | Preset::Jmespath => None,
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// A JSON number written as an integer (`1`, not `1.0`): a class label, not a probability.
fn is_integer(v: &Value) -> bool {
    v.is_i64() || v.is_u64()
}

fn max_of(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    let mut max: Option<f64> = None;
    for value in values {
        // One unreadable class score makes the whole distribution suspect (logits, labels).
        let value = unit(value?)?;
        max = Some(max.map_or(value, |m: f64| m.max(value)));
    }
    max
}

/// A probability vector (`[p0, p1, …]` ⇒ its max) or a lone binary probability (`[p]`).
/// Integers only (`[0, 1]`, `[3]`) are labels or one-hot codes, not probabilities.
fn probability_row(items: &[Value]) -> Option<f64> {
    if items.is_empty() || items.iter().all(is_integer) {
        return None;
    }
    match items {
        [p] => binary(number(p)?),
        _ => max_of(items.iter().map(number)),
    }
}

fn scores(items: &[Value], key: &str) -> impl Iterator<Item = Option<f64>> {
    items.iter().map(move |item| item.get(key).and_then(number))
}

// ---------------------------------------------------------------------------------------------
// Hugging Face pipelines (transformers, Inference Endpoints, TGI)

fn huggingface(doc: &Document<'_>) -> Option<f64> {
    match doc {
        Document::Json(value) => hf_value(value),
        Document::Sse(events) => tgi_stream(events),
        _ => None,
    }
}

fn hf_value(value: &Value) -> Option<f64> {
    match value {
        Value::Array(items) if items.iter().all(Value::is_array) => {
            // A batch: one list per input.
            min_of(items.iter().map(|item| hf_list(item.as_array()?)))
        }
        Value::Array(items) => hf_list(items),
        Value::Object(o) => hf_object(o),
        _ => None,
    }
}

fn hf_list(items: &[Value]) -> Option<f64> {
    let all = |pred: fn(&Value) -> bool| !items.is_empty() && items.iter().all(pred);
    if all(|i| {
        i.get("score").is_some() && (i.get("entity").is_some() || i.get("entity_group").is_some())
    }) {
        // Token classification: every entity found is a prediction; the weakest one counts.
        min_of(scores(items, "score"))
    } else if all(|i| i.get("label").is_some() && i.get("score").is_some()) {
        label_scores(items)
    } else if all(Value::is_object) {
        // Zero-shot or generation results for several inputs.
        min_of(items.iter().map(|item| hf_object(item.as_object()?)))
    } else {
        None
    }
}

/// `[{label, score}, …]` is either one input's scores over its labels (`top_k`), or the top
/// label of each of several inputs. Distinct labels whose scores sum to at most 1 are one
/// distribution (max); otherwise each item is an instance (min).
fn label_scores(items: &[Value]) -> Option<f64> {
    let labels: Vec<Option<&str>> = items
        .iter()
        .map(|i| i.get("label").and_then(Value::as_str))
        .collect();
    let scores: Vec<Option<f64>> = scores(items, "score").collect();
    label_score_confidence(&labels, &scores)
}

/// [`label_scores`] on the items' labels (`None`: not a string) and scores (`None`: not a
/// number), however they were parsed.
pub(super) fn label_score_confidence(
    labels: &[Option<&str>],
    scores: &[Option<f64>],
) -> Option<f64> {
    let mut distinct_labels: Vec<&str> = labels.iter().flatten().copied().collect();
    let count = distinct_labels.len();
    distinct_labels.sort_unstable();
    distinct_labels.dedup();
    let distinct = count == labels.len() && distinct_labels.len() == count;
    let sum: f64 = scores.iter().map(|s| s.unwrap_or(f64::NAN)).sum();
    if distinct && sum <= 1.0 + 1e-3 {
        max_of(scores.iter().copied())
    } else {
        min_of(scores.iter().copied())
    }
}

fn hf_object(o: &Map<String, Value>) -> Option<f64> {
    if let Some(Value::Array(scores)) = o.get("scores")
        && o.contains_key("labels")
    {
        // Zero-shot classification: scores over the candidate labels.
        return max_of(scores.iter().map(number));
    }
    if o.contains_key("answer") {
        // Question answering.
        return o.get("score").and_then(number);
    }
    if let Some(tokens) = o
        .get("details")
        .and_then(|d| d.get("tokens"))
        .and_then(Value::as_array)
    {
        // Text generation with `details: true` (TGI): geometric mean of token probabilities.
        let mut mean = LogMean::default();
        for token in tokens.iter().filter(|t| !is_special(t)) {
            mean.add(token.get("logprob"));
        }
        return mean.probability();
    }
    None
}

fn is_special(token: &Value) -> bool {
    token.get("special").and_then(Value::as_bool) == Some(true)
}

/// TGI's `/generate_stream`: one `token` per event.
fn tgi_stream(events: &[Value]) -> Option<f64> {
    let mut mean = LogMean::default();
    for token in events.iter().filter_map(|e| e.get("token")) {
        if !is_special(token) {
            mean.add(token.get("logprob"));
        }
    }
    mean.probability()
}

/// exp(mean log probability): the per-token probability of the generated text.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct LogMean {
    sum: f64,
    count: u64,
}

impl LogMean {
    pub(super) fn add(&mut self, logprob: Option<&Value>) {
        if let Some(lp) = logprob.and_then(number)
            && lp.is_finite()
            && lp <= super::EPSILON
        {
            self.sum += lp;
            self.count += 1;
        }
    }

    pub(super) fn probability(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.sum / self.count as f64).exp())
    }
}

// ---------------------------------------------------------------------------------------------
// SageMaker built-in algorithms

fn sagemaker(doc: &Document<'_>) -> Option<f64> {
    match doc {
        Document::Json(Value::Object(o)) => {
            if let Some(predictions) = o.get("predictions") {
                prediction_rows(predictions)
            } else if let Some(Value::Array(probabilities)) = o.get("prediction") {
                // Image classification: one probability per class.
                probability_row(probabilities)
            } else {
                // One JSON Lines record on its own: `{"score": 0.4, "predicted_label": 0}`.
                prediction_object(o)
            }
        }
        Document::Json(Value::Array(items)) if items.iter().all(|i| i.get("prob").is_some()) => {
            // BlazingText: the top-k probabilities of each input, best first; no binary reading
            // because one `prob` is the top label's, not the positive class's.
            min_of(items.iter().map(|item| {
                let probs = item.get("prob")?.as_array()?;
                max_of(probs.iter().map(number))
            }))
        }
        Document::Json(v @ Value::Number(_)) if !is_integer(v) => binary(number(v)?),
        Document::JsonLines(lines) => min_of(lines.iter().map(prediction)),
        Document::Text(text) => csv(text),
        _ => None,
    }
}

/// `predictions: [...]`: one entry per instance.
fn prediction_rows(predictions: &Value) -> Option<f64> {
    let rows = predictions.as_array()?;
    if rows.iter().all(is_integer) {
        return None; // predicted labels only
    }
    min_of(rows.iter().map(prediction))
}

/// One instance: a binary probability, a probability vector, or an object carrying one.
fn prediction(row: &Value) -> Option<f64> {
    match row {
        Value::Number(_) if !is_integer(row) => binary(number(row)?),
        Value::Array(items) => probability_row(items),
        Value::Object(o) => prediction_object(o),
        _ => None,
    }
}

/// The keys SageMaker algorithms (linear learner, factorization machines, XGBoost, Autopilot)
/// and TF estimators write probabilities under.
fn prediction_object(o: &Map<String, Value>) -> Option<f64> {
    for key in ["probabilities", "scores", "probs"] {
        if let Some(Value::Array(items)) = o.get(key) {
            return probability_row(items);
        }
    }
    if let Some(p) = o.get("probability").and_then(number) {
        // XGBoost's binary `probability` is the positive class's; a multiclass one is the top
        // class's and already the max.
        let multiclass = o
            .get("labels")
            .and_then(Value::as_array)
            .is_some_and(|l| l.len() > 2);
        return if multiclass { unit(p) } else { binary(p) };
    }
    match o.get("score") {
        Some(Value::Array(items)) => probability_row(items),
        // A scalar score is a probability only for a classifier (it has a predicted label);
        // a regressor's score is its prediction.
        Some(score) if o.contains_key("predicted_label") => binary(number(score)?),
        _ => None,
    }
}

/// XGBoost's `text/csv`: `0.6,0.1` (one probability per row, comma- or newline-separated), or
/// `[0.1, 0.5, 0.4],[…]` for `multi:softprob`; with selectable output, quoted lists beside
/// labels (`1,"[0.4, 0.6]"`). When lists are present they are the instances.
fn csv(text: &str) -> Option<f64> {
    let fields = csv_fields(text);
    let lists: Vec<Vec<Value>> = fields
        .iter()
        .filter(|f| f.starts_with('['))
        .filter_map(|f| serde_json::from_str::<Vec<Value>>(f).ok())
        .collect();
    if !lists.is_empty() {
        return min_of(lists.iter().map(|l| probability_row(l)));
    }
    let numbers: Vec<Option<f64>> = fields
        .iter()
        .filter(|f| f.contains(['.', 'e', 'E']))
        .map(|f| f.parse::<f64>().ok().and_then(binary))
        .collect();
    if numbers.iter().any(Option::is_none) {
        return None; // not (only) probabilities: regression values, text
    }
    min_of(numbers)
}

/// Splits on commas and line breaks outside brackets and quotes; strips the quotes.
fn csv_fields(text: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let (mut depth, mut quoted, mut start) = (0usize, false, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth = depth.saturating_sub(1),
            ',' | '\n' | '\r' if !quoted && depth == 0 => {
                fields.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    fields.push(&text[start..]);
    fields
        .into_iter()
        .map(|f| f.trim().trim_matches('"').trim())
        .filter(|f| !f.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TF Serving REST and KServe v1

fn tfserving(doc: &Document<'_>) -> Option<f64> {
    let Document::Json(Value::Object(o)) = doc else {
        return None;
    };
    if let Some(predictions) = o.get("predictions") {
        return prediction_rows(predictions);
    }
    match o.get("outputs") {
        // The columnar ("inputs") format: `outputs` is the one output, or named outputs.
        Some(outputs @ Value::Array(_)) => return prediction_rows(outputs),
        Some(Value::Object(named)) => {
            for key in ["probabilities", "scores", "probs", "probability"] {
                if let Some(rows) = named.get(key) {
                    return prediction_rows(rows);
                }
            }
            return None;
        }
        _ => {}
    }
    // The Classify API: `result: [[[label, score], …], …]`, one list per example.
    let examples = o.get("result")?.as_array()?;
    min_of(examples.iter().map(|pairs| {
        let pairs = pairs.as_array()?;
        max_of(pairs.iter().map(|pair| pair.get(1).and_then(number)))
    }))
}

// ---------------------------------------------------------------------------------------------
// KServe v2 / Open Inference Protocol

fn kserve_v2(doc: &Document<'_>) -> Option<f64> {
    let outputs = doc.json()?.get("outputs")?.as_array()?;
    // Float tensors holding only probabilities; one named like one is preferred.
    let readable: Vec<(&Value, Vec<f64>)> = outputs
        .iter()
        .filter(|out| is_float_tensor(out))
        .filter_map(|out| Some((out, tensor_data(out)?)))
        .collect();
    let named = |out: &Value| {
        let name = out
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_ascii_lowercase();
        ["prob", "score", "confidence", "softmax"]
            .iter()
            .any(|hint| name.contains(hint))
    };
    let (out, data) = readable
        .iter()
        .find(|(out, _)| named(out))
        .or_else(|| readable.first())?;
    tensor_confidence(out, data)
}

fn is_float_tensor(out: &Value) -> bool {
    match out.get("datatype").and_then(Value::as_str) {
        Some(dt) => matches!(dt, "FP16" | "FP32" | "FP64" | "BF16"),
        None => true,
    }
}

/// The tensor's elements in row-major order (`data` may be flat or nested), all probabilities.
fn tensor_data(out: &Value) -> Option<Vec<f64>> {
    fn flatten(v: &Value, into: &mut Vec<f64>, depth: usize) -> Option<()> {
        match v {
            Value::Array(items) if depth < 32 => {
                for item in items {
                    flatten(item, into, depth + 1)?;
                }
                Some(())
            }
            Value::Number(_) => {
                into.push(unit(v.as_f64()?)?);
                Some(())
            }
            _ => None,
        }
    }
    let mut data = Vec::new();
    flatten(out.get("data")?, &mut data, 0)?;
    (!data.is_empty()).then_some(data)
}

/// Rows are all axes but the last; the last axis holds a row's class probabilities (size 1: a
/// binary probability). A `shape` that does not match the data is not guessed at.
fn tensor_confidence(out: &Value, data: &[f64]) -> Option<f64> {
    let shape: Vec<u64> = match out.get("shape") {
        Some(Value::Array(dims)) => dims.iter().map(Value::as_u64).collect::<Option<_>>()?,
        _ => vec![data.len() as u64],
    };
    let elements = shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d))?;
    if elements != data.len() as u64 {
        return None;
    }
    let classes = shape.last().copied().unwrap_or(1).max(1) as usize;
    min_of(data.chunks(classes).map(|row| match row {
        [p] => binary(*p),
        _ => row.iter().copied().reduce(f64::max),
    }))
}

// ---------------------------------------------------------------------------------------------
// OpenAI-compatible chat completions and completions

fn openai(doc: &Document<'_>) -> Option<f64> {
    match doc {
        Document::Json(value) => {
            let choices = value.get("choices")?.as_array()?;
            min_of(choices.iter().map(|choice| {
                let mut mean = LogMean::default();
                add_choice_logprobs(choice, &mut mean);
                mean.probability()
            }))
        }
        Document::Sse(events) => {
            // Streamed chunks carry each choice's tokens in pieces: accumulate by `index`.
            let mut by_choice: std::collections::BTreeMap<u64, LogMean> = Default::default();
            for event in events {
                let Some(choices) = event.get("choices").and_then(Value::as_array) else {
                    continue;
                };
                for (position, choice) in choices.iter().enumerate() {
                    let index = choice
                        .get("index")
                        .and_then(Value::as_u64)
                        .unwrap_or(position as u64);
                    add_choice_logprobs(choice, by_choice.entry(index).or_default());
                }
            }
            min_of(by_choice.values().map(LogMean::probability))
        }
        _ => None,
    }
}

/// Chat: `logprobs.content[].logprob`; legacy completions: `logprobs.token_logprobs[]`.
fn add_choice_logprobs(choice: &Value, mean: &mut LogMean) {
    let Some(logprobs) = choice.get("logprobs") else {
        return;
    };
    if let Some(content) = logprobs.get("content").and_then(Value::as_array) {
        for token in content {
            mean.add(token.get("logprob"));
        }
    }
    if let Some(tokens) = logprobs.get("token_logprobs").and_then(Value::as_array) {
        for lp in tokens {
            mean.add(Some(lp));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AWS AI services (0–100 confidences for Rekognition and Textract)

fn percent(v: Option<&Value>) -> Option<f64> {
    v.and_then(number).map(|x| x / 100.0)
}

fn rekognition(doc: &Document<'_>) -> Option<f64> {
    let o = doc.json()?.as_object()?;
    let labels = ["ModerationLabels", "CustomLabels", "Labels"]
        .iter()
        .find_map(|key| o.get(*key).and_then(Value::as_array))?;
    min_of(labels.iter().map(|l| percent(l.get("Confidence"))))
}

fn textract(doc: &Document<'_>) -> Option<f64> {
    let blocks = doc.json()?.get("Blocks")?.as_array()?;
    min_of(
        blocks
            .iter()
            .filter(|b| b.get("BlockType").and_then(Value::as_str) != Some("PAGE"))
            .map(|b| percent(b.get("Confidence"))),
    )
}

fn comprehend(doc: &Document<'_>) -> Option<f64> {
    let o = doc.json()?.as_object()?;
    match o.get("ResultList") {
        // Batch operations: one result per document.
        Some(Value::Array(results)) => {
            min_of(results.iter().map(|r| comprehend_result(r.as_object()?)))
        }
        _ => comprehend_result(o),
    }
}

fn comprehend_result(o: &Map<String, Value>) -> Option<f64> {
    if let Some(Value::Object(sentiment)) = o.get("SentimentScore") {
        return max_of(sentiment.values().map(number));
    }
    for key in ["Languages", "Classes", "Labels"] {
        if let Some(Value::Array(items)) = o.get(key) {
            return max_of(scores(items, "Score"));
        }
    }
    for key in ["Entities", "KeyPhrases"] {
        if let Some(Value::Array(items)) = o.get(key) {
            return min_of(scores(items, "Score"));
        }
    }
    None
}
