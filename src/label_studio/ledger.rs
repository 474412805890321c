//! The bridge's ledger (pure): in each task's `meta`, what became of each of its annotations,
//! so a restarted bridge (or the catch-up after a webhook) does not publish an annotation
//! twice. Kept in Label Studio itself, next to the annotations: the bridge has no state of
//! its own.
//!
//! `meta.reviewloop_published` maps an annotation id to the `updated_at` the bridge handled
//! and its outcome (`published`, or why it was skipped).

use serde_json::{Value, json};

use super::task::PUBLISHED_KEY;

/// What to do with an annotation, given the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This version was handled already.
    Done,
    /// A new version of an annotation already published: not published again (the joiner
    /// counts a reviewer's first answer for an item).
    Updated,
    /// Not handled yet, or only skipped before (an annotation that was skipped or empty and
    /// is now filled in is published).
    Handle,
}

/// The step for annotation `id` saved at `updated_at`, by `meta`'s ledger.
pub fn step(meta: &Value, id: u64, updated_at: Option<&str>) -> Step {
    let Some(entry) = meta.get(PUBLISHED_KEY).and_then(|l| l.get(id.to_string())) else {
        return Step::Handle;
    };
    let same = entry.get("updated_at").and_then(Value::as_str) == updated_at;
    let published = entry.get("outcome").and_then(Value::as_str) == Some("published");
    match (same, published) {
        (true, _) => Step::Done,
        (false, true) => Step::Updated,
        (false, false) => Step::Handle,
    }
}

/// `meta` with annotation `id` recorded at `updated_at` with `outcome` (an update of a
/// published annotation stays `published`).
pub fn record(meta: &Value, id: u64, updated_at: Option<&str>, outcome: &str) -> Value {
    let mut meta = match meta {
        Value::Object(_) => meta.clone(),
        _ => json!({}),
    };
    if !meta.get(PUBLISHED_KEY).is_some_and(Value::is_object) {
        meta[PUBLISHED_KEY] = json!({});
    }
    let key = id.to_string();
    let was_published =
        meta[PUBLISHED_KEY][&key].get("outcome").and_then(Value::as_str) == Some("published");
    let outcome = if was_published { "published" } else { outcome };
    meta[PUBLISHED_KEY][&key] = json!({ "updated_at": updated_at, "outcome": outcome });
    meta
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_annotation_is_published_once_and_updates_are_not_republished() {
        let meta = json!({"reasons": ["sampled"]});
        assert_eq!(step(&meta, 4, Some("t1")), Step::Handle);
        let meta = record(&meta, 4, Some("t1"), "published");
        assert_eq!(meta["reasons"][0], "sampled", "the rest of meta is kept");
        assert_eq!(step(&meta, 4, Some("t1")), Step::Done);
        assert_eq!(step(&meta, 5, Some("t1")), Step::Handle);
        assert_eq!(step(&meta, 4, Some("t2")), Step::Updated);
        let meta = record(&meta, 4, Some("t2"), "updated");
        assert_eq!(meta[PUBLISHED_KEY]["4"]["outcome"], "published");
        assert_eq!(step(&meta, 4, Some("t2")), Step::Done);
    }

    #[test]
    fn a_skipped_annotation_filled_in_later_is_handled_again() {
        let meta = record(&Value::Null, 7, Some("t1"), "cancelled");
        assert_eq!(step(&meta, 7, Some("t1")), Step::Done);
        assert_eq!(step(&meta, 7, Some("t2")), Step::Handle);
    }
}
