//! One partition's transaction, in four steps: *plan* (pure: apply a batch of input records
//! and due timers to the partition's [`Progress`], giving effects, invalid-input dead letters,
//! a tally and the review offsets to read back), *fetch* (read those review records), *finish*
//! (pure: render the effects and the changelog into the records to write), *commit* (write
//! them, the consumed offsets included, in one Kafka transaction).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tracing::debug;

use super::answer;
use super::changelog::{self, Positions};
use super::clients::Settings;
use crate::kafka::ReaderContext;
use super::render::{self, Input, Output, Tally};
use super::state::{Effect, JoinState, ReceivedAnswer, ReviewOutcome, ReviewRef};
use crate::kafka::{cloudevent_headers, with_traceparent};
use crate::metrics::AnswerResult;

/// Bound on each transactional call.
pub(crate) const TXN_TIMEOUT: Duration = Duration::from_secs(60);
/// A topic-partition that delivered nothing for this long is taken as caught up, so its
/// watermark is the wall clock (see [`Clock`]).
const CAUGHT_UP_AFTER: Duration = Duration::from_secs(2);

/// How far one input topic-partition has been read, in record time.
#[derive(Debug)]
pub(crate) struct Clock {
    newest_ms: i64,
    last_record: Instant,
}

impl Clock {
    pub fn new(now: Instant) -> Clock {
        Clock {
            newest_ms: i64::MIN,
            last_record: now,
        }
    }

    fn saw(&mut self, timestamp_ms: i64, now: Instant) {
        self.newest_ms = self.newest_ms.max(timestamp_ms);
        self.last_record = now;
    }

    /// The wall clock once the topic-partition has been quiet for a while (read to its end),
    /// else the newest record time read: a backlog is judged by its own timestamps.
    fn watermark(&self, now_ms: i64, now: Instant) -> i64 {
        if now.duration_since(self.last_record) >= CAUGHT_UP_AFTER {
            now_ms
        } else {
            self.newest_ms
        }
    }
}

/// One partition's join: its state, where its inputs have been read to, and how far in
/// record time.
#[derive(Debug)]
pub(crate) struct Progress {
    pub partition: i32,
    pub state: JoinState,
    pub positions: Positions,
    pub review_clock: Clock,
    pub completed_clock: Clock,
}

impl Progress {
    pub fn new(partition: i32, state: JoinState, positions: Positions, now: Instant) -> Progress {
        Progress {
            partition,
            state,
            positions,
            review_clock: Clock::new(now),
            completed_clock: Clock::new(now),
        }
    }
}

/// The time a transaction is planned at: the monotonic clock for the caught-up test, the
/// wall clock for deadlines and the times written into records.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn current() -> Now {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn millis(self) -> i64 {
        self.wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A batch applied to a partition's state, before anything is read back or written.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    /// Items leaving the state, in order.
    pub effects: Vec<Effect>,
    /// Dead letters of invalid input records.
    pub outputs: Vec<Output>,
    pub tally: Tally,
    /// Review payloads read in this batch, so items completing now need no fetch.
    fresh_reviews: HashMap<i64, &'a [u8]>,
    positions_before: Positions,
}

/// Applies `inputs` (the partition's records of one batch) and the timers due by the inputs'
/// watermarks to `progress`. Records before the stored positions were applied already
/// (delivered again after a seek) and are skipped.
pub(crate) fn plan<'a>(
    settings: &Settings,
    progress: &mut Progress,
    inputs: &[Input<'a>],
    now: Now,
) -> Plan<'a> {
    let now_ms = now.millis();
    let mut plan = Plan {
        effects: Vec::new(),
        outputs: Vec::new(),
        tally: Tally::default(),
        fresh_reviews: HashMap::new(),
        positions_before: progress.positions,
    };
    for input in inputs {
        let offset = input.offset;
        let timestamp_ms = input.timestamp_ms.unwrap_or(now_ms);
        let is_review = input.topic == settings.review_topic;
        let position = if is_review {
            &mut progress.positions.review
        } else {
            &mut progress.positions.completed
        };
        if position.is_some_and(|next| offset < next) {
            continue; // already applied (delivered again after a seek)
        }
        *position = Some(offset + 1);
        let bytes = input.payload.unwrap_or_default();
        if is_review {
            progress.review_clock.saw(timestamp_ms, now.instant);
            match answer::parse_review(bytes) {
                Ok(record) => {
                    plan.fresh_reviews.insert(offset, bytes);
                    let review = ReviewRef {
                        offset,
                        timestamp_ms,
                    };
                    let (outcome, effect) = progress.state.on_review(&record.id, review);
                    if let ReviewOutcome::Accepted { early_answers } = outcome {
                        plan.tally
                            .answer(AnswerResult::Accepted, early_answers as u64);
                    }
                    plan.effects.extend(effect);
                }
                Err(invalid) => {
                    let letter =
                        render::invalid_input(settings, input, invalid, now.wall, &mut plan.tally);
                    plan.outputs.push(letter);
                }
            }
        } else {
            progress.completed_clock.saw(timestamp_ms, now.instant);
            match answer::parse_completed(bytes) {
                Ok((id, answers)) => {
                    for answer in answers {
                        let received = ReceivedAnswer {
                            answer,
                            offset,
                            timestamp_ms,
                        };
                        let (outcome, effect) = progress.state.on_answer(&id, received);
                        if let Some(result) = outcome.result() {
                            plan.tally.answer(result, 1);
                        }
                        plan.effects.extend(effect);
                    }
                }
                Err(invalid) => {
                    plan.tally.answer(AnswerResult::Invalid, 1);
                    let letter =
                        render::invalid_input(settings, input, invalid, now.wall, &mut plan.tally);
                    plan.outputs.push(letter);
                }
            }
        }
    }
    plan.effects.extend(progress.state.expire(
        progress.review_clock.watermark(now_ms, now.instant),
        progress.completed_clock.watermark(now_ms, now.instant),
    ));
    plan
}

/// The records of one transaction and the metric updates due once it commits.
#[derive(Debug)]
pub(crate) struct Txn {
    pub outputs: Vec<Output>,
    pub tally: Tally,
}

impl Plan<'_> {
    /// The review records to read back by offset (sorted): those of items completing now
    /// whose record was read in an earlier batch.
    pub fn wanted(&self) -> Vec<i64> {
        let mut wanted: Vec<i64> = self
            .effects
            .iter()
            .filter_map(|effect| match effect {
                Effect::Joined { review, .. }
                    if !self.fresh_reviews.contains_key(&review.offset) =>
                {
                    Some(review.offset)
                }
                _ => None,
            })
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
    }

    /// The records to write: outputs, then the state changes and positions. `None` when
    /// there is nothing to write (no record read, nothing due).
    pub fn finish(
        self,
        settings: &Settings,
        progress: &mut Progress,
        fetched: &HashMap<i64, Vec<u8>>,
        now: SystemTime,
    ) -> Option<Txn> {
        let Plan {
            effects,
            mut outputs,
            mut tally,
            fresh_reviews,
            positions_before,
        } = self;
        for effect in effects {
            let review_bytes = match &effect {
                Effect::Joined { review, .. } => fresh_reviews
                    .get(&review.offset)
                    .copied()
                    .or_else(|| fetched.get(&review.offset).map(Vec::as_slice)),
                Effect::Dead { .. } => None,
            };
            let partition = progress.partition;
            outputs.push(render::effect(
                settings,
                partition,
                effect,
                review_bytes,
                now,
                &mut tally,
            ));
        }
        let changes = progress.state.take_changes();
        if outputs.is_empty() && changes.is_empty() && progress.positions == positions_before {
            return None;
        }
        outputs.extend(changelog::records(
            &settings.state_topic,
            progress.partition,
            changes,
            progress.positions,
        ));
        Some(Txn { outputs, tally })
    }
}

/// Applies `inputs` and due timers to `progress` and writes the outputs, the changelog and
/// the input offsets in one transaction; the tally is what to count once it committed.
/// Writes nothing when there is nothing to write. On error the transaction is aborted and
/// `progress` holds changes that were not committed: the caller rebuilds it.
pub(crate) fn run<C: ConsumerContext>(
    settings: &Settings,
    reader: &BaseConsumer<ReaderContext>,
    consumer: &BaseConsumer<C>,
    producer: &BaseProducer,
    progress: &mut Progress,
    inputs: &[Input<'_>],
) -> Result<Tally, KafkaError> {
    let now = Now::current();
    let plan = plan(settings, progress, inputs, now);
    let fetched = changelog::fetch_records(
        reader,
        &settings.review_topic,
        progress.partition,
        &plan.wanted(),
    )?;
    let Some(txn) = plan.finish(settings, progress, &fetched, now.wall) else {
        return Ok(Tally::default());
    };
    commit(settings, consumer, producer, progress, &txn.outputs)?;
    Ok(txn.tally)
}

/// Writes `outputs` and the consumed offsets (`progress`'s positions) in one transaction,
/// sent with the consumer's group metadata so that a member that lost its generation
/// cannot commit.
fn commit<C: ConsumerContext>(
    settings: &Settings,
    consumer: &BaseConsumer<C>,
    producer: &BaseProducer,
    progress: &Progress,
    outputs: &[Output],
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    for output in outputs {
        send(producer, output).map_err(|e| abort(producer, e))?;
    }
    let mut offsets = TopicPartitionList::new();
    for (topic, position) in [
        (&settings.review_topic, progress.positions.review),
        (&settings.completed_topic, progress.positions.completed),
    ] {
        if let Some(next) = position {
            offsets.add_partition_offset(topic, progress.partition, Offset::Offset(next))?;
        }
    }
    if offsets.count() > 0
        && let Some(group) = consumer.group_metadata()
    {
        producer
            .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
            .map_err(|e| abort(producer, e))?;
    }
    producer
        .commit_transaction(TXN_TIMEOUT)
        .map_err(|e| abort(producer, e))
}

/// Aborts the open transaction after `error` (best effort: a fenced producer cannot).
fn abort(producer: &BaseProducer, error: KafkaError) -> KafkaError {
    if let Err(abort_error) = producer.abort_transaction(TXN_TIMEOUT) {
        debug!(error = %abort_error, "abort failed");
    }
    error
}

/// Queues one output, waiting while the producer's queue is full. An output's CloudEvent
/// becomes its headers here, with a fresh `ce_id`.
fn send(producer: &BaseProducer, output: &Output) -> Result<(), KafkaError> {
    let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(&output.topic);
    if let Some(partition) = output.partition {
        record = record.partition(partition);
    }
    if let Some(key) = &output.key {
        record = record.key(key.as_str());
    }
    if let Some(payload) = &output.payload {
        record = record.payload(payload.as_slice());
    }
    if let Some(event) = &output.event {
        record = record.headers(with_traceparent(
            cloudevent_headers(event.ce_type, &event.subject, &event.time),
            event.traceparent.as_deref(),
        ));
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::join::render::tests::{review_record, settings};
    use crate::record::DeadLetterReason;
    use crate::record::RetrainingRecord;

    /// The settings, the time, a fresh partition 3 and the bytes of review record `r-1`.
    fn setup() -> (Settings, Now, Progress, Vec<u8>) {
        let settings = settings();
        let now = Now::current();
        let state = JoinState::new(settings.rules);
        let progress = Progress::new(3, state, Positions::default(), now.instant);
        let review = serde_json::to_vec(&review_record("r-1")).unwrap();
        (settings, now, progress, review)
    }

    const ANSWER: &[u8] = br#"{"id": "r-1", "reviewer": "alice", "answer": "dog"}"#;

    /// Review `r-1` at offset 40 of the review topic and its answer at offset 8.
    fn review_and_answer<'a>(settings: &'a Settings, review: &'a [u8]) -> [Input<'a>; 2] {
        [
            input(&settings.review_topic, 40, review),
            input(&settings.completed_topic, 8, ANSWER),
        ]
    }

    fn input<'a>(topic: &'a str, offset: i64, payload: &'a [u8]) -> Input<'a> {
        Input {
            topic,
            partition: 3,
            offset,
            timestamp_ms: Some(1_000 + offset),
            payload: Some(payload),
            content_type: None,
        }
    }

    #[test]
    fn a_review_and_its_answer_in_one_batch_join_into_one_retraining_record() {
        let (settings, now, mut progress, review) = setup();
        let inputs = review_and_answer(&settings, &review);
        let plan = plan(&settings, &mut progress, &inputs, now);
        assert!(
            matches!(&plan.effects[..], [Effect::Joined { id, label, .. }] if id == "r-1" && label == "dog"),
            "{:?}",
            plan.effects
        );
        assert_eq!(
            plan.tally.answers,
            BTreeMap::from([(AnswerResult::Accepted, 1)])
        );
        assert!(
            plan.wanted().is_empty(),
            "the review was read in this batch"
        );
        assert_eq!(
            progress.positions,
            Positions {
                review: Some(41),
                completed: Some(9)
            }
        );

        let txn = plan
            .finish(&settings, &mut progress, &HashMap::new(), now.wall)
            .expect("something to write");
        let [retraining, state @ .., positions] = &txn.outputs[..] else {
            panic!("{:?}", txn.outputs)
        };
        assert_eq!(retraining.topic, settings.retraining_topic);
        let record: RetrainingRecord =
            serde_json::from_slice(retraining.payload.as_deref().unwrap()).unwrap();
        assert_eq!(
            (record.id.as_str(), record.label.as_str()),
            ("r-1", Some("dog"))
        );
        assert_eq!(state.len(), 1);
        assert_eq!(state[0].key.as_deref(), Some("i:r-1"));
        assert_eq!(state[0].partition, Some(3));
        assert_eq!(positions.topic, settings.state_topic);
        assert_eq!(
            positions.payload.as_deref(),
            Some(&br#"{"review":41,"completed":9}"#[..])
        );
        assert_eq!(txn.tally.retraining, 1);
    }

    #[test]
    fn records_delivered_again_after_a_seek_change_nothing() {
        let (settings, now, mut progress, review) = setup();
        let inputs = review_and_answer(&settings, &review);
        let first = plan(&settings, &mut progress, &inputs, now);
        assert!(
            first
                .finish(&settings, &mut progress, &HashMap::new(), now.wall)
                .is_some()
        );
        let again = plan(&settings, &mut progress, &inputs, now);
        assert!(again.effects.is_empty());
        assert_eq!(again.tally, Tally::default());
        assert!(
            again
                .finish(&settings, &mut progress, &HashMap::new(), now.wall)
                .is_none(),
            "no transaction for records already applied"
        );
    }

    #[test]
    fn an_answer_to_a_review_read_earlier_fetches_the_review_by_offset() {
        let (settings, now, mut progress, review) = setup();
        let first = plan(
            &settings,
            &mut progress,
            &[input(&settings.review_topic, 40, &review)],
            now,
        );
        first.finish(&settings, &mut progress, &HashMap::new(), now.wall);
        let inputs = [input(&settings.completed_topic, 8, ANSWER)];
        let plan = plan(&settings, &mut progress, &inputs, now);
        assert_eq!(plan.wanted(), [40]);
        let fetched = HashMap::from([(40, review)]);
        let txn = plan
            .finish(&settings, &mut progress, &fetched, now.wall)
            .unwrap();
        assert_eq!(txn.outputs[0].topic, settings.retraining_topic);
    }

    #[test]
    fn an_unreadable_answer_is_a_dead_letter_and_counted_invalid() {
        let (settings, now, mut progress, _) = setup();
        let inputs = [input(&settings.completed_topic, 0, b"{not json")];
        let plan = plan(&settings, &mut progress, &inputs, now);
        assert!(plan.effects.is_empty());
        assert_eq!(plan.outputs.len(), 1);
        assert_eq!(plan.outputs[0].topic, settings.dead_letter_topic);
        assert_eq!(
            plan.tally.answers,
            BTreeMap::from([(AnswerResult::Invalid, 1)])
        );
        assert_eq!(
            plan.tally.dead_letters,
            BTreeMap::from([(DeadLetterReason::Invalid, 1)])
        );
        assert_eq!(
            progress.positions.completed,
            Some(1),
            "the partition moves on"
        );
    }

    #[test]
    fn clocks_use_record_time_until_caught_up() {
        let start = Instant::now();
        let mut clock = Clock::new(start);
        assert_eq!(clock.watermark(1_000, start), i64::MIN);
        clock.saw(500, start);
        assert_eq!(
            clock.watermark(1_000, start + Duration::from_millis(10)),
            500
        );
        assert_eq!(clock.watermark(9_000, start + CAUGHT_UP_AFTER), 9_000);
    }
}
