//! Typed, borrowing readers for the commonest response shape, so that reading its confidence
//! does not build a `serde_json::Value` tree (a `BTreeMap` and a `String` per object key):
//! Hugging Face text classification, `[{"label": …, "score": …}, …]` or a batch of such lists.
//! They answer exactly as the presets do on the parsed [`Document`](super::Document), or not at
//! all: a body with any other shape (another key, a label that is not a string, an empty
//! list…) is left to the generic path.

use std::borrow::Cow;

use serde::Deserialize;

use super::presets::label_score_confidence;
use super::{min_of, trim_start};

/// One `{label, score}` object, and nothing else in it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LabelScore<'a> {
    #[serde(borrow)]
    label: Cow<'a, str>,
    score: f64,
}

/// The confidence of a text-classification answer (before the final range check), or `None`
/// when `body` (leading whitespace trimmed) is not one.
pub(super) fn label_scores(body: &[u8]) -> Option<Option<f64>> {
    let after_bracket = body.strip_prefix(b"[")?;
    if trim_start(after_bracket).starts_with(b"[") {
        let batch: Vec<Vec<LabelScore<'_>>> = serde_json::from_slice(body).ok()?;
        if batch.is_empty() {
            return None;
        }
        Some(min_of(batch.iter().map(|list| one_input(list))))
    } else {
        let list: Vec<LabelScore<'_>> = serde_json::from_slice(body).ok()?;
        if list.is_empty() {
            return None;
        }
        Some(one_input(&list))
    }
}

fn one_input(list: &[LabelScore<'_>]) -> Option<f64> {
    if list.is_empty() {
        return None;
    }
    let labels: Vec<Option<&str>> = list.iter().map(|i| Some(i.label.as_ref())).collect();
    let scores: Vec<Option<f64>> = list.iter().map(|i| Some(i.score)).collect();
    label_score_confidence(&labels, &scores)
}
