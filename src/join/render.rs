//! What the joiner writes, pure: an [`Effect`] or an invalid input record becomes an
//! [`Output`] (a retraining record or a dead letter), and the metric updates it implies are
//! added to a [`Tally`]. No Kafka client and no clock: the caller passes the time, and the
//! commit step turns an output's [`CloudEvent`] into record headers.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::accuracy::{self, AgreementCount};
use super::answer::{self, Invalid};
use super::clients::Settings;
use super::state::{Effect, ReceivedAnswer, ReviewRef};
use crate::kafka::{CE_DEAD_LETTER, CE_RETRAINING_EXAMPLE};
use crate::metrics::AnswerResult;
use crate::record::{
    DeadLetter, DeadLetterReason, Encoding, Payload, RetrainingRecord, ReviewRecord, rfc3339_millis,
};

/// Dead letters carry at most this much of the original payload; the whole record stays at
/// the source topic, partition and offset the dead letter names.
pub(crate) const DEAD_LETTER_PAYLOAD_MAX: usize = 64 * 1024;

/// One input record as read from the review or completed topic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp, when it has one.
    pub timestamp_ms: Option<i64>,
    /// `None`: the record has no value.
    pub payload: Option<&'a [u8]>,
    /// The record's `content-type` header.
    pub content_type: Option<&'a str>,
}

/// The CloudEvents attributes of an output; `ce_id` is minted when the record is sent.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CloudEvent {
    pub ce_type: &'static str,
    pub subject: String,
    pub time: String,
    /// The originating request's W3C trace context (`ce_traceparent`).
    pub traceparent: Option<String>,
}

/// A record to write in a task's transaction.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Output {
    pub topic: String,
    /// `None`: the producer's partitioner decides, by key.
    pub partition: Option<i32>,
    pub key: Option<String>,
    /// `None`: a tombstone.
    pub payload: Option<Vec<u8>>,
    pub event: Option<CloudEvent>,
}

/// Metric updates of one transaction, applied only once it commits.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Tally {
    /// `reviewloop_join_answers_total` by outcome.
    pub answers: BTreeMap<AnswerResult, u64>,
    /// `reviewloop_dead_letters_total` by reason.
    pub dead_letters: BTreeMap<DeadLetterReason, u64>,
    pub retraining: u64,
    pub turnaround_seconds: Vec<f64>,
    /// `reviewloop_model_agreement_total` and `reviewloop_calibration_total`, per record.
    pub agreements: Vec<AgreementCount>,
}

impl Tally {
    pub fn answer(&mut self, result: AnswerResult, n: u64) {
        *self.answers.entry(result).or_default() += n;
    }
}

/// The record an effect becomes: a retraining record, or a dead letter pointing at the
/// review record (no agreement, expired) or at the first orphaned answer. `review_bytes` is
/// the review record of a joined item, `None` when it is no longer on its topic.
pub(crate) fn effect(
    settings: &Settings,
    partition: i32,
    effect: Effect,
    review_bytes: Option<&[u8]>,
    now: SystemTime,
    tally: &mut Tally,
) -> Output {
    match effect {
        Effect::Joined {
            id,
            review,
            answers,
            label,
            agreeing,
            completed_at_ms,
        } => {
            let record = match review_bytes.map(answer::parse_review) {
                Some(Ok(record)) => record,
                // The review record is gone (retention shorter than review_timeout) or no
                // longer reads: the answers are not lost, they go to a dead letter.
                failed => {
                    let detail = match failed {
                        Some(Err(invalid)) => invalid.detail,
                        _ => format!(
                            "the review record at offset {} is no longer on the topic",
                            review.offset
                        ),
                    };
                    let letter = summary_dead_letter(
                        settings,
                        partition,
                        DeadLetterReason::Expired,
                        id,
                        Some(review),
                        &answers,
                        Some(detail),
                    );
                    return dead_letter(settings, letter, now, tally);
                }
            };
            let reviewed_at = rfc3339_millis(time_of(completed_at_ms));
            tally.retraining += 1;
            tally
                .turnaround_seconds
                .push((completed_at_ms - review.timestamp_ms).max(0) as f64 / 1000.0);
            let retraining = retraining_record(record, label, agreeing, &answers, reviewed_at);
            if let Some(agreed) = retraining.model_agreed {
                tally.agreements.push(AgreementCount::new(
                    &retraining.route,
                    &retraining.reasons,
                    retraining.confidence,
                    agreed,
                ));
            }
            Output {
                topic: settings.retraining_topic.clone(),
                partition: None,
                event: Some(CloudEvent {
                    ce_type: CE_RETRAINING_EXAMPLE,
                    subject: retraining.id.clone(),
                    time: retraining.reviewed_at.clone(),
                    traceparent: retraining.traceparent.clone(),
                }),
                key: Some(id),
                payload: Some(serde_json::to_vec(&retraining).expect("records serialize")),
            }
        }
        Effect::Dead {
            reason,
            id,
            review,
            answers,
        } => {
            let detail = match reason {
                DeadLetterReason::Orphan => {
                    tally.answer(AnswerResult::Orphan, answers.len() as u64);
                    Some(format!(
                        "no review record for this id within join.orphan_timeout on partition {partition}; \
                         answers must be keyed by id like the review topic"
                    ))
                }
                DeadLetterReason::Expired => Some(format!(
                    "{} of {} answers within join.review_timeout",
                    answers.len(),
                    settings.rules.reviewers_per_item
                )),
                DeadLetterReason::NoAgreement => Some(format!(
                    "the answers have no {} answer",
                    settings.rules.agreement.as_str()
                )),
                DeadLetterReason::Invalid => None,
            };
            let letter =
                summary_dead_letter(settings, partition, reason, id, review, &answers, detail);
            dead_letter(settings, letter, now, tally)
        }
    }
}

/// The dead letter of an input record that cannot be used: its original bytes (at most
/// [`DEAD_LETTER_PAYLOAD_MAX`] of them) and why.
pub(crate) fn invalid_input(
    settings: &Settings,
    input: &Input<'_>,
    invalid: Invalid,
    now: SystemTime,
    tally: &mut Tally,
) -> Output {
    let bytes = input.payload.unwrap_or_default();
    let (payload, cut) = original_payload(input.content_type, bytes);
    let mut detail = invalid.detail;
    if input.payload.is_none() {
        detail = "the record has no value".into();
    }
    if cut {
        detail.push_str(&format!(
            " (payload cut to {DEAD_LETTER_PAYLOAD_MAX} of {} bytes; the whole record is at the source offset)",
            bytes.len()
        ));
    }
    let letter = DeadLetter {
        reason: DeadLetterReason::Invalid,
        id: invalid.id,
        source_topic: input.topic.to_owned(),
        partition: input.partition,
        offset: input.offset,
        detail: Some(detail),
        payload,
    };
    dead_letter(settings, letter, now, tally)
}

fn dead_letter(
    settings: &Settings,
    letter: DeadLetter,
    now: SystemTime,
    tally: &mut Tally,
) -> Output {
    *tally.dead_letters.entry(letter.reason).or_default() += 1;
    let key = letter.id.clone();
    Output {
        topic: settings.dead_letter_topic.clone(),
        partition: None,
        event: Some(CloudEvent {
            ce_type: CE_DEAD_LETTER,
            subject: key.clone().unwrap_or_default(),
            time: rfc3339_millis(now),
            traceparent: None,
        }),
        key,
        payload: Some(serde_json::to_vec(&letter).expect("dead letters serialize")),
    }
}

/// The original bytes as a dead letter's payload: JSON when they parse, else text or base64;
/// cut to [`DEAD_LETTER_PAYLOAD_MAX`] (the flag says so) so a dead letter always fits.
fn original_payload(content_type: Option<&str>, bytes: &[u8]) -> (Payload, bool) {
    let cut = bytes.len() > DEAD_LETTER_PAYLOAD_MAX;
    let kept = &bytes[..bytes.len().min(DEAD_LETTER_PAYLOAD_MAX)];
    if !cut && let Ok(value) = serde_json::from_slice::<Value>(kept) {
        return (
            Payload {
                content_type: content_type.map(str::to_owned),
                encoding: Encoding::Json,
                body: value,
            },
            false,
        );
    }
    (Payload::from_bytes(content_type, kept), cut)
}

/// A dead letter about an item as a whole, carrying its answers.
fn summary_dead_letter(
    settings: &Settings,
    partition: i32,
    reason: DeadLetterReason,
    id: String,
    review: Option<ReviewRef>,
    answers: &[ReceivedAnswer],
    detail: Option<String>,
) -> DeadLetter {
    let (source_topic, offset) = match review {
        Some(review) => (settings.review_topic.clone(), review.offset),
        None => (
            settings.completed_topic.clone(),
            answers.first().map_or(-1, |a| a.offset),
        ),
    };
    let body = serde_json::json!({
        "answers": answers.iter().map(|a| &a.answer).collect::<Vec<_>>(),
        "answer_offsets": answers.iter().map(|a| a.offset).collect::<Vec<_>>(),
    });
    DeadLetter {
        reason,
        id: Some(id),
        source_topic,
        partition,
        offset,
        detail,
        payload: Payload {
            content_type: Some("application/json".into()),
            encoding: Encoding::Json,
            body,
        },
    }
}

fn retraining_record(
    review: ReviewRecord,
    label: Value,
    agreeing: usize,
    answers: &[ReceivedAnswer],
    reviewed_at: String,
) -> RetrainingRecord {
    let answered = answers.len();
    let judged = accuracy::judge(&review.response.payload, &label);
    RetrainingRecord {
        id: review.id,
        time: review.time,
        route: review.route,
        request: review.request,
        response: review.response,
        confidence: review.confidence,
        reasons: review.reasons,
        label,
        // The exact fraction (2 of 3 is 0.666…), with the counts it comes from.
        agreement: agreeing as f64 / answered.max(1) as f64,
        agreeing: agreeing as u32,
        answered: answered as u32,
        answers: answers.iter().map(|a| a.answer.clone()).collect(),
        reviewed_at,
        model: review.model,
        traceparent: review.traceparent,
        model_label: judged.model_label,
        model_agreed: judged.agreed,
        redaction: review.redaction,
    }
}

fn time_of(millis: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).unwrap_or(0))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::join::JoinConfig;
    use crate::kafka::KafkaConfig;
    use crate::record::{Answer, Reason, ResponsePayload};

    pub(crate) fn settings() -> Settings {
        Settings::new(
            &JoinConfig::default(),
            &KafkaConfig::default(),
            "unused:9092",
        )
    }

    /// A review record as the proxy writes it.
    pub(crate) fn review_record(id: &str) -> ReviewRecord {
        ReviewRecord {
            id: id.into(),
            time: "2026-01-01T00:00:00.000Z".into(),
            route: "default".into(),
            request: Payload::from_bytes(Some("application/json"), br#"{"text":"a cat?"}"#),
            response: ResponsePayload {
                status: 200,
                payload: Payload::from_bytes(
                    Some("application/json"),
                    br#"{"label":"cat","score":0.41}"#,
                ),
            },
            confidence: Some(0.41),
            reasons: vec![Reason::LowConfidence],
            sample_percent: 0.0,
            conditions: Vec::new(),
            model: Default::default(),
            truncated: false,
            traceparent: None,
            redaction: None,
        }
    }

    pub(crate) fn received(reviewer: &str, label: &str, offset: i64) -> ReceivedAnswer {
        ReceivedAnswer {
            answer: Answer {
                reviewer: reviewer.into(),
                answer: Value::String(label.into()),
                submitted_at: None,
                time_spent_seconds: None,
            },
            offset,
            timestamp_ms: 61_000,
        }
    }

    /// Every answer agreeing but the ones for another label than "dog".
    fn joined(answers: Vec<ReceivedAnswer>) -> Effect {
        let agreeing = answers
            .iter()
            .filter(|a| a.answer.answer == "dog")
            .count();
        Effect::Joined {
            id: "r-1".into(),
            review: ReviewRef {
                offset: 7,
                timestamp_ms: 1_000,
            },
            answers,
            label: Value::String("dog".into()),
            agreeing,
            completed_at_ms: 61_000,
        }
    }

    fn letter(output: &Output) -> DeadLetter {
        serde_json::from_slice(output.payload.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn the_record_and_the_tally_say_whether_the_reviewers_agreed_with_the_model() {
        let mut review = review_record("r-1");
        review.response.payload = Payload::from_bytes(
            Some("application/json"),
            br#"[{"label":"dog","score":0.83},{"label":"cat","score":0.17}]"#,
        );
        review.confidence = Some(0.83);
        review.reasons = vec![Reason::LowConfidence, Reason::Sampled];
        let bytes = serde_json::to_vec(&review).unwrap();
        let mut tally = Tally::default();
        let answers = vec![received("alice", "dog", 3)];
        let output = effect(&settings(), 0, joined(answers), Some(&bytes), UNIX_EPOCH, &mut tally);
        let record: RetrainingRecord =
            serde_json::from_slice(output.payload.as_deref().unwrap()).unwrap();
        assert_eq!(record.model_label.as_deref(), Some("dog"));
        assert_eq!(record.model_agreed, Some(true));
        assert_eq!(
            tally.agreements,
            [AgreementCount {
                route: "default".into(),
                reasons: vec![Reason::LowConfidence, Reason::Sampled],
                bucket: Some("0.8"),
                agreed: true,
            }]
        );
        // A response with no label list to compare with: null, and nothing counted.
        let plain = serde_json::to_vec(&review_record("r-1")).unwrap();
        let mut tally = Tally::default();
        let answers = vec![received("alice", "dog", 3)];
        let output = effect(&settings(), 0, joined(answers), Some(&plain), UNIX_EPOCH, &mut tally);
        let record: Value = serde_json::from_slice(output.payload.as_deref().unwrap()).unwrap();
        assert_eq!(record["model_label"], Value::Null);
        assert_eq!(record["model_agreed"], Value::Null);
        assert!(tally.agreements.is_empty());
    }

    #[test]
    fn a_two_of_three_majority_carries_two_thirds_exactly_and_the_counts() {
        let answers = vec![
            received("alice", "dog", 3),
            received("bob", "cat", 4),
            received("carol", "dog", 5),
        ];
        let review = serde_json::to_vec(&review_record("r-1")).unwrap();
        let mut tally = Tally::default();
        let output = effect(
            &settings(),
            0,
            joined(answers),
            Some(&review),
            UNIX_EPOCH,
            &mut tally,
        );
        let record: serde_json::Value =
            serde_json::from_slice(output.payload.as_deref().unwrap()).unwrap();
        assert_eq!(record["agreement"], 2.0 / 3.0);
        assert_eq!(record["agreeing"], 2);
        assert_eq!(record["answered"], 3);
    }

    #[test]
    fn a_joined_item_becomes_a_retraining_record_with_the_exchange_and_the_label() {
        let settings = settings();
        let review = serde_json::to_vec(&review_record("r-1")).unwrap();
        let mut tally = Tally::default();
        let output = effect(
            &settings,
            2,
            joined(vec![received("alice", "dog", 3)]),
            Some(&review),
            UNIX_EPOCH,
            &mut tally,
        );
        assert_eq!(output.topic, settings.retraining_topic);
        assert_eq!(output.key.as_deref(), Some("r-1"));
        let event = output.event.as_ref().unwrap();
        assert_eq!(event.ce_type, CE_RETRAINING_EXAMPLE);
        assert_eq!(event.subject, "r-1");
        assert_eq!(
            event.time, "1970-01-01T00:01:01.000Z",
            "when the item completed"
        );
        let record: RetrainingRecord =
            serde_json::from_slice(output.payload.as_deref().unwrap()).unwrap();
        let original = review_record("r-1");
        assert_eq!(record.request, original.request);
        assert_eq!(record.response, original.response);
        assert_eq!(record.confidence, Some(0.41));
        assert_eq!(record.reasons, [Reason::LowConfidence]);
        assert_eq!(record.label, "dog");
        assert_eq!(record.agreement, 1.0);
        assert_eq!(record.answers, [received("alice", "dog", 3).answer]);
        assert_eq!(tally.retraining, 1);
        assert_eq!(tally.turnaround_seconds, [60.0]);
        assert!(tally.dead_letters.is_empty());
    }

    #[test]
    fn a_joined_item_whose_review_record_is_gone_is_an_expired_dead_letter_with_the_answers() {
        let settings = settings();
        let mut tally = Tally::default();
        let answers = vec![received("alice", "dog", 3), received("bob", "dog", 4)];
        let output = effect(&settings, 2, joined(answers), None, UNIX_EPOCH, &mut tally);
        assert_eq!(output.topic, settings.dead_letter_topic);
        assert_eq!(output.event.as_ref().unwrap().ce_type, CE_DEAD_LETTER);
        let letter = letter(&output);
        assert_eq!(letter.reason, DeadLetterReason::Expired);
        assert_eq!(letter.id.as_deref(), Some("r-1"));
        assert_eq!(
            (
                letter.source_topic.as_str(),
                letter.partition,
                letter.offset
            ),
            (settings.review_topic.as_str(), 2, 7),
            "points at the review record"
        );
        assert!(letter.detail.unwrap().contains("no longer on the topic"));
        assert_eq!(letter.payload.body["answers"][1]["reviewer"], "bob");
        assert_eq!(
            letter.payload.body["answer_offsets"],
            serde_json::json!([3, 4])
        );
        assert_eq!(tally.retraining, 0);
        assert_eq!(
            tally.dead_letters,
            BTreeMap::from([(DeadLetterReason::Expired, 1)])
        );
    }

    #[test]
    fn orphaned_answers_point_at_the_first_answer_and_are_counted_as_orphans() {
        let settings = settings();
        let mut tally = Tally::default();
        let orphan = Effect::Dead {
            reason: DeadLetterReason::Orphan,
            id: "r-9".into(),
            review: None,
            answers: vec![received("alice", "dog", 11), received("bob", "cat", 12)],
        };
        let letter = letter(&effect(&settings, 1, orphan, None, UNIX_EPOCH, &mut tally));
        assert_eq!(letter.source_topic, settings.completed_topic);
        assert_eq!(letter.offset, 11);
        assert!(letter.detail.unwrap().contains("join.orphan_timeout"));
        assert_eq!(tally.answers, BTreeMap::from([(AnswerResult::Orphan, 2)]));
        assert_eq!(
            tally.dead_letters,
            BTreeMap::from([(DeadLetterReason::Orphan, 1)])
        );
    }

    #[test]
    fn an_invalid_records_dead_letter_carries_its_bytes_cut_to_64_kib() {
        let settings = settings();
        let huge = "not json ".repeat(120_000);
        let input = Input {
            topic: &settings.completed_topic,
            partition: 4,
            offset: 99,
            timestamp_ms: None,
            payload: Some(huge.as_bytes()),
            content_type: Some("text/plain"),
        };
        let invalid = Invalid {
            id: None,
            detail: "not JSON".into(),
        };
        let mut tally = Tally::default();
        let output = invalid_input(&settings, &input, invalid, UNIX_EPOCH, &mut tally);
        assert_eq!(output.key, None);
        assert_eq!(output.event.as_ref().unwrap().subject, "");
        let letter = letter(&output);
        assert_eq!(letter.reason, DeadLetterReason::Invalid);
        assert_eq!(
            (
                letter.source_topic.as_str(),
                letter.partition,
                letter.offset
            ),
            (settings.completed_topic.as_str(), 4, 99)
        );
        assert_eq!(
            letter.payload.to_bytes().unwrap(),
            huge.as_bytes()[..DEAD_LETTER_PAYLOAD_MAX]
        );
        assert_eq!(letter.payload.content_type.as_deref(), Some("text/plain"));
        let detail = letter.detail.unwrap();
        assert!(detail.starts_with("not JSON"), "{detail}");
        assert!(detail.contains("cut to 65536 of 1080000 bytes"), "{detail}");
        assert_eq!(
            tally.dead_letters,
            BTreeMap::from([(DeadLetterReason::Invalid, 1)])
        );
    }

    #[test]
    fn dead_letter_payloads_are_json_when_they_parse_and_cut_when_huge() {
        let (payload, cut) = original_payload(None, br#"{"id": 3}"#);
        assert_eq!((payload.encoding, cut), (Encoding::Json, false));
        let noise: Vec<u8> = (0..1_048_576u64).map(|i| (i * 7919 % 251) as u8).collect();
        let (payload, cut) = original_payload(None, &noise);
        assert!(cut);
        assert_eq!(payload.encoding, Encoding::Base64);
        assert!(payload.to_bytes().unwrap().len() <= DEAD_LETTER_PAYLOAD_MAX);
    }
}
