//! The join state of one partition, pure: which reviews wait for which answers, how answers
//! consolidate, when an item times out, and the changelog entries that rebuild it all.
//!
//! No I/O and no clock: every time is a Kafka record timestamp or a watermark the caller
//! passes in (milliseconds since the Unix epoch), so tests and property tests need no clock.
//!
//! Memory per pending review is one [`Entry`]: where the review record sits on its topic
//! (offset and timestamp, never its payload) plus the answers received so far, which are
//! small and needed for the retraining record anyway.

use std::cmp::Reverse;
use std::collections::hash_map;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Agreement, JoinConfig};
use crate::metrics::AnswerResult;
use crate::record::{Answer, DeadLetterReason};

/// The consolidation and timeout rules, from `[join]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    pub reviewers_per_item: usize,
    pub agreement: Agreement,
    pub review_timeout_ms: i64,
    pub orphan_timeout_ms: i64,
}

impl Rules {
    pub fn from_config(config: &JoinConfig) -> Rules {
        let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Rules {
            reviewers_per_item: config.reviewers_per_item.max(1) as usize,
            agreement: config.agreement,
            review_timeout_ms: millis(config.review_timeout),
            orphan_timeout_ms: millis(config.orphan_timeout),
        }
    }
}

/// Where a review record sits on the review topic: all the joiner keeps of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRef {
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// One reviewer's answer and where it came from on the completed topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedAnswer {
    #[serde(flatten)]
    pub answer: Answer,
    pub offset: i64,
    pub timestamp_ms: i64,
}

/// What the joiner knows about one id. This is also the changelog value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<ReceivedAnswer>,
    /// Set once the item has had its output: until then, later answers and review records for
    /// this id are duplicates (a reviewer's double submit must not become an orphan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_until_ms: Option<i64>,
}

/// Which input a deadline waits on, and so which topic's watermark decides it has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaits {
    /// Answers (a pending review, or a closed item's duplicate window): completed topic.
    Answers,
    /// The review record (answers that came first): review topic.
    Review,
}

impl Entry {
    fn is_closed(&self) -> bool {
        self.closed_until_ms.is_some()
    }

    fn deadline(&self, rules: &Rules) -> (Awaits, i64) {
        if let Some(until) = self.closed_until_ms {
            return (Awaits::Answers, until);
        }
        match (&self.review, self.answers.first()) {
            (Some(review), _) => (
                Awaits::Answers,
                review.timestamp_ms.saturating_add(rules.review_timeout_ms),
            ),
            (None, Some(first)) => (
                Awaits::Review,
                first.timestamp_ms.saturating_add(rules.orphan_timeout_ms),
            ),
            // Never stored: an entry has a review, an answer or a close mark.
            (None, None) => (Awaits::Answers, i64::MIN),
        }
    }
}

/// What an answer did to the state (`reviewloop_join_answers_total{outcome}`).
///
/// Each answer is counted once, at its final outcome: `accepted` once it is joined to its
/// review record, `duplicate` on arrival, `orphan` when it is dead-lettered without one. An
/// answer that arrives before its review record is [`AnswerOutcome::AwaitingReview`] until
/// one of those happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerOutcome {
    /// Held with its review record.
    Accepted,
    /// The same reviewer again, an answer beyond `reviewers_per_item`, or one for an item
    /// that already had its output.
    Duplicate,
    /// Held, waiting for its review record: counted when the record arrives (`accepted`, see
    /// [`ReviewOutcome::Accepted`]) or the wait ends ([`DeadLetterReason::Orphan`]).
    AwaitingReview,
}

impl AnswerOutcome {
    /// What the answer counts as, or `None` while the outcome is not final.
    pub fn result(self) -> Option<AnswerResult> {
        match self {
            AnswerOutcome::Accepted => Some(AnswerResult::Accepted),
            AnswerOutcome::Duplicate => Some(AnswerResult::Duplicate),
            AnswerOutcome::AwaitingReview => None,
        }
    }
}

/// What a review record did to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Held; `early_answers` answers that were waiting for it are now accepted.
    Accepted { early_answers: usize },
    /// A second review record for a pending or finished id; the first one counts.
    Duplicate,
}

/// An item leaving the state, to be written out.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Enough answers agreed: one retraining record.
    Joined {
        id: String,
        review: ReviewRef,
        answers: Vec<ReceivedAnswer>,
        label: Value,
        /// How many of the answers gave `label`.
        agreeing: usize,
        /// Timestamp of the record that completed the item.
        completed_at_ms: i64,
    },
    /// A dead letter: `NoAgreement`, `Expired` (with the review) or `Orphan` (without).
    Dead {
        reason: DeadLetterReason,
        id: String,
        review: Option<ReviewRef>,
        answers: Vec<ReceivedAnswer>,
    },
}

/// The consensus of `answers` under `agreement`: the label and how many answers gave it.
/// `None` is no agreement. Answers are compared as JSON values (object key order does not
/// matter).
pub fn consolidate(answers: &[ReceivedAnswer], agreement: Agreement) -> Option<(Value, usize)> {
    let total = answers.len();
    if total == 0 {
        return None;
    }
    let mut best: Option<(&Value, usize)> = None;
    for (i, candidate) in answers.iter().enumerate() {
        // Count each distinct value once, at its first occurrence.
        if answers[..i]
            .iter()
            .any(|earlier| earlier.answer.answer == candidate.answer.answer)
        {
            continue;
        }
        let count = answers
            .iter()
            .filter(|a| a.answer.answer == candidate.answer.answer)
            .count();
        if best.is_none_or(|(_, c)| count > c) {
            best = Some((&candidate.answer.answer, count));
        }
    }
    let (label, count) = best?;
    let agreed = match agreement {
        Agreement::Majority => count * 2 > total,
        Agreement::Unanimous => count == total,
    };
    agreed.then(|| (label.clone(), count))
}

/// The pending reviews and waiting answers of one partition.
#[derive(Debug)]
pub struct JoinState {
    rules: Rules,
    entries: HashMap<Arc<str>, Entry>,
    /// Deadlines judged by the completed topic's watermark; stale items are skipped on pop.
    awaiting_answers: BinaryHeap<Reverse<(i64, Arc<str>)>>,
    /// Deadlines judged by the review topic's watermark.
    awaiting_review: BinaryHeap<Reverse<(i64, Arc<str>)>>,
    /// Ids changed since the last [`JoinState::take_changes`].
    dirty: HashSet<Arc<str>>,
    /// Entries that are not closed.
    pending: usize,
}

impl JoinState {
    pub fn new(rules: Rules) -> JoinState {
        JoinState {
            rules,
            entries: HashMap::new(),
            awaiting_answers: BinaryHeap::new(),
            awaiting_review: BinaryHeap::new(),
            dirty: HashSet::new(),
            pending: 0,
        }
    }

    /// Reviews and early answers still waiting for their counterpart (the
    /// `reviewloop_reviews_pending` gauge).
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Ids held, closed ones included.
    pub fn held(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.get(id)
    }

    /// A review record arrived. It completes the item when its answers came first.
    pub fn on_review(&mut self, id: &str, review: ReviewRef) -> (ReviewOutcome, Option<Effect>) {
        let key = self.key(id);
        let early_answers = match self.entries.entry(Arc::clone(&key)) {
            hash_map::Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                if entry.is_closed() || entry.review.is_some() {
                    return (ReviewOutcome::Duplicate, None);
                }
                entry.review = Some(review);
                entry.answers.len()
            }
            hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Entry {
                    review: Some(review),
                    ..Entry::default()
                });
                self.pending += 1;
                0
            }
        };
        self.dirty.insert(Arc::clone(&key));
        let effect = self.try_complete(&key);
        if effect.is_none() {
            self.schedule(&key);
        }
        (ReviewOutcome::Accepted { early_answers }, effect)
    }

    /// An answer arrived. It completes the item when it is the last one needed and the
    /// review record is there.
    pub fn on_answer(
        &mut self,
        id: &str,
        answer: ReceivedAnswer,
    ) -> (AnswerOutcome, Option<Effect>) {
        let key = self.key(id);
        let needed = self.rules.reviewers_per_item;
        match self.entries.entry(Arc::clone(&key)) {
            hash_map::Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                if entry.is_closed()
                    || entry.answers.len() >= needed
                    || entry
                        .answers
                        .iter()
                        .any(|a| a.answer.reviewer == answer.answer.reviewer)
                {
                    return (AnswerOutcome::Duplicate, None);
                }
                // The deadline is the review's or the first answer's: already scheduled.
                let outcome = if entry.review.is_some() {
                    AnswerOutcome::Accepted
                } else {
                    AnswerOutcome::AwaitingReview
                };
                entry.answers.push(answer);
                self.dirty.insert(Arc::clone(&key));
                (outcome, self.try_complete(&key))
            }
            hash_map::Entry::Vacant(vacant) => {
                vacant.insert(Entry {
                    answers: vec![answer],
                    ..Entry::default()
                });
                self.pending += 1;
                self.dirty.insert(Arc::clone(&key));
                self.schedule(&key);
                (AnswerOutcome::AwaitingReview, None)
            }
        }
    }

    /// Items whose deadline has passed: reviews without enough answers by the completed
    /// topic's watermark (`expired`), answers without a review by the review topic's
    /// watermark (`orphan`). Closed items past their duplicate window are forgotten.
    ///
    /// A watermark is the time up to which that topic has been read: the caller passes the
    /// wall clock when it is caught up, else the newest record timestamp it has seen, so a
    /// joiner catching up on a backlog does not expire items whose answers are in the backlog.
    pub fn expire(&mut self, review_watermark_ms: i64, answers_watermark_ms: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(Reverse((deadline, key))) =
            pop_due(&mut self.awaiting_answers, answers_watermark_ms)
        {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            if entry.deadline(&self.rules) != (Awaits::Answers, deadline) {
                continue;
            }
            if entry.is_closed() {
                self.entries.remove(&key);
                self.dirty.insert(key);
                continue;
            }
            // The duplicate window starts now, not at the deadline, which may be long past
            // when a backlog is read.
            let entry = self.close(&key, deadline.max(answers_watermark_ms));
            effects.push(Effect::Dead {
                reason: DeadLetterReason::Expired,
                id: key.to_string(),
                review: entry.review,
                answers: entry.answers,
            });
        }
        while let Some(Reverse((deadline, key))) =
            pop_due(&mut self.awaiting_review, review_watermark_ms)
        {
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            if entry.deadline(&self.rules) != (Awaits::Review, deadline) {
                continue;
            }
            // Forgotten, not closed: a review record arriving after all waits for new
            // answers and ends in a dead letter of its own if none come. Nothing is dropped
            // silently.
            let entry = self.entries.remove(&key).expect("entry checked above");
            self.pending -= 1;
            self.dirty.insert(Arc::clone(&key));
            effects.push(Effect::Dead {
                reason: DeadLetterReason::Orphan,
                id: key.to_string(),
                review: None,
                answers: entry.answers,
            });
        }
        effects
    }

    /// The changelog records since the last call: the id and its entry, or `None` when the
    /// id is forgotten (a tombstone). Sorted by id so the output is deterministic.
    pub fn take_changes(&mut self) -> Vec<(String, Option<Entry>)> {
        let mut changes: Vec<(String, Option<Entry>)> = self
            .dirty
            .drain()
            .map(|key| (key.to_string(), self.entries.get(&key).cloned()))
            .collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    /// Applies one changelog record while restoring (a later record for the same id
    /// replaces the earlier one; `None` forgets it). Not itself a change.
    pub fn restore(&mut self, id: &str, entry: Option<Entry>) {
        let key = self.key(id);
        let old = match entry {
            Some(entry) => {
                let open = !entry.is_closed();
                let old = self.entries.insert(Arc::clone(&key), entry);
                if open {
                    self.pending += 1;
                }
                self.schedule(&key);
                old
            }
            None => self.entries.remove(&key),
        };
        if old.is_some_and(|old| !old.is_closed()) {
            self.pending -= 1;
        }
    }

    /// The shared key for `id`, reusing the stored one so heaps and the map share it.
    fn key(&self, id: &str) -> Arc<str> {
        self.entries
            .get_key_value(id)
            .map(|(k, _)| Arc::clone(k))
            .unwrap_or_else(|| Arc::from(id))
    }

    fn schedule(&mut self, key: &Arc<str>) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        let (awaits, deadline) = entry.deadline(&self.rules);
        let heap = match awaits {
            Awaits::Answers => &mut self.awaiting_answers,
            Awaits::Review => &mut self.awaiting_review,
        };
        heap.push(Reverse((deadline, Arc::clone(key))));
    }

    fn try_complete(&mut self, key: &Arc<str>) -> Option<Effect> {
        let entry = self.entries.get(key)?;
        let review = entry.review?;
        if entry.is_closed() || entry.answers.len() < self.rules.reviewers_per_item {
            return None;
        }
        let completed_at_ms = entry
            .answers
            .iter()
            .map(|a| a.timestamp_ms)
            .fold(review.timestamp_ms, i64::max);
        let consensus = consolidate(&entry.answers, self.rules.agreement);
        let entry = self.close(key, completed_at_ms);
        let id = key.to_string();
        Some(match consensus {
            Some((label, agreeing)) => Effect::Joined {
                id,
                review,
                answers: entry.answers,
                label,
                agreeing,
                completed_at_ms,
            },
            None => Effect::Dead {
                reason: DeadLetterReason::NoAgreement,
                id,
                review: Some(review),
                answers: entry.answers,
            },
        })
    }

    /// Marks `key` finished at `at` and hands back what it held.
    fn close(&mut self, key: &Arc<str>, at: i64) -> Entry {
        let entry = self.entries.get_mut(key).expect("closing a held entry");
        let held = std::mem::replace(
            entry,
            Entry {
                review: None,
                answers: Vec::new(),
                closed_until_ms: Some(at.saturating_add(self.rules.orphan_timeout_ms)),
            },
        );
        self.pending -= 1;
        self.dirty.insert(Arc::clone(key));
        self.schedule(key);
        held
    }
}

fn pop_due(
    heap: &mut BinaryHeap<Reverse<(i64, Arc<str>)>>,
    watermark: i64,
) -> Option<Reverse<(i64, Arc<str>)>> {
    match heap.peek() {
        Some(Reverse((deadline, _))) if *deadline <= watermark => heap.pop(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rules(n: usize, agreement: Agreement) -> Rules {
        Rules {
            reviewers_per_item: n,
            agreement,
            review_timeout_ms: 10_000,
            orphan_timeout_ms: 1_000,
        }
    }

    fn answer(reviewer: &str, label: &str, offset: i64, ts: i64) -> ReceivedAnswer {
        ReceivedAnswer {
            answer: Answer {
                reviewer: reviewer.into(),
                answer: json!({ "label": label }),
                submitted_at: None,
                time_spent_seconds: None,
            },
            offset,
            timestamp_ms: ts,
        }
    }

    fn review(offset: i64, ts: i64) -> ReviewRef {
        ReviewRef {
            offset,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn one_reviewer_joins_in_either_order() {
        let mut state = JoinState::new(rules(1, Agreement::Majority));
        assert_eq!(
            state.on_review("a", review(0, 100)),
            (ReviewOutcome::Accepted { early_answers: 0 }, None)
        );
        assert_eq!(state.pending(), 1);
        let (outcome, effect) = state.on_answer("a", answer("alice", "cat", 0, 200));
        assert_eq!(outcome, AnswerOutcome::Accepted);
        match effect {
            Some(Effect::Joined {
                label,
                agreeing,
                answers,
                completed_at_ms,
                ..
            }) => {
                assert_eq!(label, json!({"label": "cat"}));
                assert_eq!((agreeing, answers.len()), (1, 1));
                assert_eq!(completed_at_ms, 200);
            }
            other => panic!("expected a join, got {other:?}"),
        }
        assert_eq!(state.pending(), 0);

        // Answer first: waits uncounted, then the review accepts it and completes the item.
        let (outcome, effect) = state.on_answer("b", answer("alice", "dog", 1, 300));
        assert_eq!((outcome, effect), (AnswerOutcome::AwaitingReview, None));
        assert_eq!(outcome.result(), None);
        let (outcome, effect) = state.on_review("b", review(1, 250));
        assert_eq!(outcome, ReviewOutcome::Accepted { early_answers: 1 });
        assert!(matches!(effect, Some(Effect::Joined { .. })));
    }

    #[test]
    fn majority_of_three_agrees_at_two_thirds() {
        let mut state = JoinState::new(rules(3, Agreement::Majority));
        state.on_review("x", review(0, 0));
        assert_eq!(state.on_answer("x", answer("a", "cat", 0, 1)).1, None);
        // The same reviewer twice counts once.
        assert_eq!(
            state.on_answer("x", answer("a", "dog", 1, 2)),
            (AnswerOutcome::Duplicate, None)
        );
        assert_eq!(state.on_answer("x", answer("b", "dog", 2, 3)).1, None);
        let (_, effect) = state.on_answer("x", answer("c", "cat", 3, 4));
        match effect {
            Some(Effect::Joined {
                label,
                agreeing,
                answers,
                ..
            }) => {
                assert_eq!(label, json!({"label": "cat"}));
                assert_eq!((agreeing, answers.len()), (2, 3));
                let reviewers: Vec<_> =
                    answers.iter().map(|a| a.answer.reviewer.as_str()).collect();
                assert_eq!(reviewers, ["a", "b", "c"]);
            }
            other => panic!("expected a join, got {other:?}"),
        }
        // Late answers for a finished item are duplicates, not orphans.
        assert_eq!(
            state.on_answer("x", answer("d", "cat", 4, 5)).0,
            AnswerOutcome::Duplicate
        );
    }

    #[test]
    fn unanimous_with_a_dissent_is_no_agreement() {
        let mut state = JoinState::new(rules(3, Agreement::Unanimous));
        state.on_review("x", review(7, 0));
        state.on_answer("x", answer("a", "cat", 0, 1));
        state.on_answer("x", answer("b", "cat", 1, 2));
        let (_, effect) = state.on_answer("x", answer("c", "dog", 2, 3));
        match effect {
            Some(Effect::Dead {
                reason,
                review,
                answers,
                ..
            }) => {
                assert_eq!(reason, DeadLetterReason::NoAgreement);
                assert_eq!(review.unwrap().offset, 7);
                assert_eq!(answers.len(), 3);
            }
            other => panic!("expected no_agreement, got {other:?}"),
        }
    }

    #[test]
    fn a_split_has_no_majority() {
        let answers = [answer("a", "cat", 0, 0), answer("b", "dog", 1, 0)];
        assert_eq!(consolidate(&answers, Agreement::Majority), None);
        let three = [
            answer("a", "cat", 0, 0),
            answer("b", "dog", 1, 0),
            answer("c", "cow", 2, 0),
        ];
        assert_eq!(consolidate(&three, Agreement::Majority), None);
        // Key order inside the answer does not matter.
        let mut x = answer("a", "cat", 0, 0);
        x.answer.answer = json!({"label": "cat", "box": [1, 2]});
        let mut y = answer("b", "cat", 0, 0);
        y.answer.answer = serde_json::from_str(r#"{"box": [1, 2], "label": "cat"}"#).unwrap();
        assert_eq!(consolidate(&[x, y], Agreement::Unanimous).unwrap().1, 2);
    }

    #[test]
    fn reviews_expire_by_the_answers_watermark() {
        let mut state = JoinState::new(rules(2, Agreement::Majority));
        state.on_review("slow", review(3, 1_000));
        state.on_answer("slow", answer("a", "cat", 0, 2_000));
        // The review topic's watermark does not expire reviews.
        assert!(state.expire(1_000_000, 10_999).is_empty());
        let effects = state.expire(0, 11_000);
        assert_eq!(effects.len(), 1);
        match &effects[0] {
            Effect::Dead {
                reason, answers, ..
            } => {
                assert_eq!(*reason, DeadLetterReason::Expired);
                assert_eq!(answers.len(), 1);
            }
            other => panic!("expected expired, got {other:?}"),
        }
        assert_eq!(state.pending(), 0);
        // An answer after expiry is a duplicate, and nothing expires twice.
        assert_eq!(
            state.on_answer("slow", answer("b", "cat", 1, 11_500)).0,
            AnswerOutcome::Duplicate
        );
        assert!(state.expire(0, 11_900).is_empty());
        // The close mark is forgotten an orphan timeout after the expiry, with a tombstone.
        state.take_changes();
        assert!(state.expire(0, 12_000).is_empty());
        assert_eq!(state.take_changes(), vec![("slow".to_string(), None)]);
        assert_eq!(state.held(), 0);
    }

    #[test]
    fn an_item_expired_late_keeps_its_duplicate_window_from_then() {
        let mut state = JoinState::new(rules(1, Agreement::Majority));
        state.on_review("r", review(0, 0));
        assert_eq!(state.expire(0, 50_000).len(), 1);
        assert_eq!(
            state.on_answer("r", answer("a", "cat", 0, 50_500)).0,
            AnswerOutcome::Duplicate
        );
        assert!(state.expire(0, 50_999).is_empty());
        assert!(state.held() > 0);
        assert!(state.expire(0, 51_000).is_empty());
        assert_eq!(state.held(), 0);
    }

    #[test]
    fn answers_without_review_become_orphans_by_the_review_watermark() {
        let mut state = JoinState::new(rules(1, Agreement::Majority));
        state.on_answer("lost", answer("a", "cat", 9, 5_000));
        assert!(state.expire(5_999, i64::MAX).is_empty());
        let effects = state.expire(6_000, 0);
        assert_eq!(
            effects,
            vec![Effect::Dead {
                reason: DeadLetterReason::Orphan,
                id: "lost".into(),
                review: None,
                answers: vec![answer("a", "cat", 9, 5_000)],
            }]
        );
        assert_eq!(state.held(), 0);
        assert_eq!(state.pending(), 0);
    }

    #[test]
    fn a_review_rescues_waiting_answers_before_the_orphan_timeout() {
        let mut state = JoinState::new(rules(3, Agreement::Majority));
        state.on_answer("x", answer("a", "cat", 0, 0));
        // A second early answer waits too; the same reviewer again is a duplicate at once.
        assert_eq!(
            state.on_answer("x", answer("b", "dog", 1, 10)).0,
            AnswerOutcome::AwaitingReview
        );
        assert_eq!(
            state.on_answer("x", answer("a", "dog", 2, 20)).0,
            AnswerOutcome::Duplicate
        );
        let rescued = state.on_review("x", review(0, 500));
        assert_eq!(rescued.0, ReviewOutcome::Accepted { early_answers: 2 });
        // Now it waits for answers until the review timeout, not the orphan timeout.
        assert!(state.expire(5_000, 5_000).is_empty());
        assert_eq!(state.pending(), 1);
    }

    #[test]
    fn changelog_values_round_trip_as_json() {
        let entry = Entry {
            review: Some(review(12, 34)),
            answers: vec![answer("a", "cat", 5, 6)],
            closed_until_ms: None,
        };
        let text = serde_json::to_string(&entry).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), entry);
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["answers"][0]["reviewer"], "a");
        assert_eq!(value["review"]["offset"], 12);
    }

    /// One input event for the property tests.
    #[derive(Debug, Clone)]
    enum Event {
        Review(usize),
        Answer(usize, usize, usize),
    }

    fn apply(state: &mut JoinState, event: &Event, offset: i64) -> Option<Effect> {
        match event {
            Event::Review(id) => state.on_review(&format!("id{id}"), review(offset, 0)).1,
            Event::Answer(id, reviewer, label) => {
                state
                    .on_answer(
                        &format!("id{id}"),
                        answer(&format!("r{reviewer}"), &format!("l{label}"), offset, 0),
                    )
                    .1
            }
        }
    }

    /// Ids, each with a review record and answers from a few reviewers (some answering
    /// twice), in any interleaving.
    fn events() -> impl Strategy<Value = (usize, Vec<Event>)> {
        (1usize..4, 1usize..12).prop_flat_map(|(needed, ids)| {
            let per_id =
                proptest::collection::vec((0usize..5, 0usize..2, proptest::bool::ANY), 0..7);
            (
                Just(needed),
                proptest::collection::vec((per_id, proptest::bool::ANY), ids),
            )
                .prop_flat_map(|(needed, items)| {
                    let mut all = Vec::new();
                    for (id, (answers, has_review)) in items.iter().enumerate() {
                        if *has_review {
                            all.push(Event::Review(id));
                        }
                        for (reviewer, label, twice) in answers {
                            all.push(Event::Answer(id, *reviewer, *label));
                            if *twice {
                                all.push(Event::Answer(id, *reviewer, 1 - *label));
                            }
                        }
                    }
                    (Just(needed), Just(all).prop_shuffle())
                })
        })
    }

    proptest! {
        /// Any interleaving: an id gets exactly one output when its review record came and
        /// `needed` distinct reviewers answered, and none otherwise.
        #[test]
        fn one_output_per_completed_id((needed, events) in events()) {
            let mut state = JoinState::new(rules(needed, Agreement::Majority));
            let mut outputs: HashMap<String, usize> = HashMap::new();
            for (i, event) in events.iter().enumerate() {
                if let Some(effect) = apply(&mut state, event, i as i64) {
                    let id = match &effect {
                        Effect::Joined { id, .. } | Effect::Dead { id, .. } => id.clone(),
                    };
                    *outputs.entry(id).or_default() += 1;
                }
            }
            let mut reviewed = HashSet::new();
            let mut reviewers: HashMap<usize, HashSet<usize>> = HashMap::new();
            for event in &events {
                match event {
                    Event::Review(id) => { reviewed.insert(*id); }
                    Event::Answer(id, r, _) => { reviewers.entry(*id).or_default().insert(*r); }
                }
            }
            for id in 0..12 {
                let complete = reviewed.contains(&id)
                    && reviewers.get(&id).map_or(0, HashSet::len) >= needed;
                let got = outputs.get(&format!("id{id}")).copied().unwrap_or(0);
                prop_assert_eq!(got, usize::from(complete), "id{} complete={}", id, complete);
            }
            let open = (0..12)
                .filter(|id| {
                    let answered = reviewers.get(id).map_or(0, HashSet::len);
                    (reviewed.contains(id) || answered > 0)
                        && !(reviewed.contains(id) && answered >= needed)
                })
                .count();
            prop_assert_eq!(state.pending(), open);
        }

        /// Every answer is counted once, at its final outcome: accepted on arrival or when
        /// its review record comes, duplicate on arrival, orphan when dead-lettered — so the
        /// outcome counts add up to the answers read once nothing is waiting.
        #[test]
        fn every_answer_is_counted_once((needed, events) in events()) {
            let mut state = JoinState::new(rules(needed, Agreement::Majority));
            let mut counted: HashMap<&str, usize> = HashMap::new();
            let mut effects = Vec::new();
            for (i, event) in events.iter().enumerate() {
                let offset = i as i64;
                match event {
                    Event::Review(id) => {
                        let (outcome, effect) = state.on_review(&format!("id{id}"), review(offset, 0));
                        if let ReviewOutcome::Accepted { early_answers } = outcome {
                            *counted.entry("accepted").or_default() += early_answers;
                        }
                        effects.extend(effect);
                    }
                    Event::Answer(id, reviewer, label) => {
                        let received = answer(&format!("r{reviewer}"), &format!("l{label}"), offset, 0);
                        let (outcome, effect) = state.on_answer(&format!("id{id}"), received);
                        if let Some(label) = outcome.result().map(AnswerResult::as_str) {
                            *counted.entry(label).or_default() += 1;
                        }
                        effects.extend(effect);
                    }
                }
            }
            effects.extend(state.expire(i64::MAX, i64::MAX));
            for effect in &effects {
                if let Effect::Dead { reason: DeadLetterReason::Orphan, answers, .. } = effect {
                    *counted.entry("orphan").or_default() += answers.len();
                }
            }
            let answers = events.iter().filter(|e| matches!(e, Event::Answer(..))).count();
            prop_assert_eq!(counted.values().sum::<usize>(), answers, "{:?}", counted);
        }

        /// A state rebuilt from its changelog at any point, then fed the rest of the input,
        /// gives the same outputs as the state that never stopped (what a restart or a
        /// rebalance does).
        #[test]
        fn changelog_restores_the_state((needed, events) in events(), cut in 0usize..64, expire_at in 0i64..3_000) {
            let cut = cut.min(events.len());
            let rules = Rules { reviewers_per_item: needed, agreement: Agreement::Majority, review_timeout_ms: 2_000, orphan_timeout_ms: 1_000 };
            let mut live = JoinState::new(rules);
            let mut changelog: Vec<(String, Option<Entry>)> = Vec::new();
            let mut live_out = Vec::new();
            for (i, event) in events[..cut].iter().enumerate() {
                live_out.extend(apply(&mut live, event, i as i64));
            }
            changelog.extend(live.take_changes());
            let mut restored = JoinState::new(rules);
            for (id, entry) in changelog {
                restored.restore(&id, entry);
            }
            prop_assert_eq!(restored.pending(), live.pending());
            prop_assert_eq!(restored.held(), live.held());
            let mut restored_out = live_out.clone();
            for (i, event) in events[cut..].iter().enumerate() {
                let offset = (cut + i) as i64;
                live_out.extend(apply(&mut live, event, offset));
                restored_out.extend(apply(&mut restored, event, offset));
            }
            live_out.extend(live.expire(expire_at, expire_at));
            restored_out.extend(restored.expire(expire_at, expire_at));
            let key = |e: &Effect| format!("{e:?}");
            live_out.sort_by_key(key);
            restored_out.sort_by_key(key);
            prop_assert_eq!(live_out, restored_out);
            prop_assert_eq!(live.pending(), restored.pending());
        }
    }
}
