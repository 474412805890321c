//! The joiner's changelog and its reads by offset: what a transaction writes to the state
//! topic (one record per changed id under `i:<id>`, the input [`Positions`] under `p`), how a
//! task's state is restored from it, and how review records are fetched back by offset.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::kafka::ReaderContext;
use super::error::JoinError;
use super::render::Output;
use super::state::{Entry, JoinState, Rules};

/// Changelog key of a partition's input positions; ids are stored under `i:<id>`.
const POSITIONS_KEY: &str = "p";
const ID_KEY_PREFIX: &str = "i:";

/// A restore or a fetch that makes no progress for this long fails.
const READ_STALL: Duration = Duration::from_secs(60);
/// Bound on the watermark query that starts a restore.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(60);

/// The input positions of one partition (the next offset to read of each input), stored in
/// the changelog with the state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Positions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<i64>,
}

/// The changelog records of one transaction on `partition`: each changed id (a tombstone
/// when it is forgotten), then the positions.
pub(crate) fn records(
    state_topic: &str,
    partition: i32,
    changes: Vec<(String, Option<Entry>)>,
    positions: Positions,
) -> Vec<Output> {
    let record = |key: String, payload: Option<Vec<u8>>| Output {
        topic: state_topic.to_owned(),
        partition: Some(partition),
        key: Some(key),
        payload,
        event: None,
    };
    let mut records: Vec<Output> = changes
        .into_iter()
        .map(|(id, entry)| {
            record(
                format!("{ID_KEY_PREFIX}{id}"),
                entry.map(|e| serde_json::to_vec(&e).expect("entries serialize")),
            )
        })
        .collect();
    records.push(record(
        POSITIONS_KEY.to_owned(),
        Some(serde_json::to_vec(&positions).expect("positions serialize")),
    ));
    records
}

/// Applies one changelog record to a state being restored. Records with other keys, and a
/// positions key without a value, are skipped.
fn apply(
    state: &mut JoinState,
    positions: &mut Positions,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> Result<(), serde_json::Error> {
    let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
        return Ok(());
    };
    if key == POSITIONS_KEY {
        if let Some(value) = value {
            *positions = serde_json::from_slice(value)?;
        }
    } else if let Some(id) = key.strip_prefix(ID_KEY_PREFIX) {
        let entry = value.map(serde_json::from_slice::<Entry>).transpose()?;
        state.restore(id, entry);
    }
    Ok(())
}

/// Rebuilds a partition's state and positions from the changelog, reading it to its end.
/// The caller has initialised the partition's producer first, so no transaction is open on
/// the partition and its end is final.
pub(crate) fn restore(
    reader: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    rules: Rules,
) -> Result<(JoinState, Positions), JoinError> {
    let mut state = JoinState::new(rules);
    let mut positions = Positions::default();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
    reader.assign(&assignment)?;
    let (_, high) = reader.fetch_watermarks(topic, partition, WATERMARK_TIMEOUT)?;
    let mut last_progress = Instant::now();
    let mut next = 0i64;
    loop {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                next = message.offset() + 1;
                apply(&mut state, &mut positions, message.key(), message.payload()).map_err(
                    |e| {
                        JoinError::Corrupt(format!("{topic}/{partition}@{}: {e}", message.offset()))
                    },
                )?;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => warn!(error = %e, topic, partition, "restore read error"),
            None => {
                // The end-of-partition event is what ends a restore (it accounts for
                // transaction markers, which are never delivered); this only covers a
                // partition that is empty.
                if next >= high {
                    break;
                }
                if last_progress.elapsed() > READ_STALL {
                    return Err(JoinError::Restore(format!(
                        "{topic}/{partition}: no progress for {}s at offset {next} of {high}",
                        READ_STALL.as_secs()
                    )));
                }
            }
        }
    }
    reader.unassign()?;
    Ok((state, positions))
}

/// The records at `offsets` (sorted) of one topic-partition, read in runs: one seek per gap,
/// then sequentially. A missing offset (deleted, compacted) is simply absent from the result.
pub(crate) fn fetch_records(
    reader: &BaseConsumer<ReaderContext>,
    topic: &str,
    partition: i32,
    offsets: &[i64],
) -> Result<HashMap<i64, Vec<u8>>, KafkaError> {
    /// A gap larger than this is skipped with a seek rather than read through.
    const READ_THROUGH: i64 = 64;
    let mut found = HashMap::with_capacity(offsets.len());
    let Some(&first) = offsets.first() else {
        return Ok(found);
    };
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(first))?;
    reader.assign(&assignment)?;
    let mut wanted = offsets.iter().copied().peekable();
    let mut last_progress = Instant::now();
    while let Some(&target) = wanted.peek() {
        match reader.poll(Duration::from_millis(200)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                let offset = message.offset();
                while wanted.next_if(|&o| o < offset).is_some() {} // gone
                if wanted.next_if_eq(&offset).is_some() {
                    found.insert(offset, message.payload().unwrap_or_default().to_vec());
                }
                if let Some(&next) = wanted.peek()
                    && next > offset + READ_THROUGH
                {
                    let mut seek = TopicPartitionList::new();
                    seek.add_partition_offset(topic, partition, Offset::Offset(next))?;
                    reader.assign(&seek)?;
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) => {
                // Past the end: what is still wanted does not exist.
                break;
            }
            Some(Err(e)) => warn!(error = %e, topic, partition, "fetch read error"),
            None if last_progress.elapsed() > READ_STALL => {
                return Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::OperationTimedOut,
                ));
            }
            None => {
                debug!(target, "waiting for a review record");
            }
        }
    }
    reader.unassign()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::join::Agreement;
    use crate::join::state::{ReceivedAnswer, ReviewRef};
    use crate::record::Answer;

    fn rules() -> Rules {
        Rules {
            reviewers_per_item: 2,
            agreement: Agreement::Majority,
            review_timeout_ms: 60_000,
            orphan_timeout_ms: 60_000,
        }
    }

    fn answer(reviewer: &str, offset: i64) -> ReceivedAnswer {
        ReceivedAnswer {
            answer: Answer {
                reviewer: reviewer.into(),
                answer: "dog".into(),
                submitted_at: None,
                time_spent_seconds: None,
            },
            offset,
            timestamp_ms: 5_000,
        }
    }

    /// Replays `records` as a restore reads them.
    fn replay(records: &[Output]) -> (JoinState, Positions) {
        let mut state = JoinState::new(rules());
        let mut positions = Positions::default();
        for record in records {
            apply(
                &mut state,
                &mut positions,
                record.key.as_deref().map(str::as_bytes),
                record.payload.as_deref(),
            )
            .unwrap();
        }
        (state, positions)
    }

    #[test]
    fn what_a_transaction_writes_restores_the_same_state_and_positions() {
        let mut state = JoinState::new(rules());
        let review = ReviewRef {
            offset: 4,
            timestamp_ms: 1_000,
        };
        state.on_review("waiting", review);
        state.on_answer("waiting", answer("alice", 9));
        state.on_answer("early", answer("bob", 10));
        let positions = Positions {
            review: Some(5),
            completed: Some(11),
        };
        let mut written = records("x-state", 2, state.take_changes(), positions);
        assert!(
            written
                .iter()
                .all(|r| r.topic == "x-state" && r.partition == Some(2))
        );
        assert_eq!(written.last().unwrap().key.as_deref(), Some("p"));

        let (restored, restored_positions) = replay(&written);
        assert_eq!(restored_positions, positions);
        assert_eq!(restored.pending(), 2);
        assert_eq!(restored.get("waiting"), state.get("waiting"));
        assert_eq!(restored.get("early"), state.get("early"));

        // A later tombstone forgets the id.
        state.expire(70_000, 70_000);
        written.extend(records("x-state", 2, state.take_changes(), positions));
        let (restored, _) = replay(&written);
        assert_eq!(restored.get("early"), None, "an orphan is forgotten");
    }

    #[test]
    fn an_unreadable_changelog_value_is_an_error_and_other_keys_are_skipped() {
        let mut state = JoinState::new(rules());
        let mut positions = Positions::default();
        assert!(apply(&mut state, &mut positions, Some(b"i:a"), Some(b"{oops")).is_err());
        apply(&mut state, &mut positions, Some(b"other"), Some(b"{oops")).unwrap();
        apply(&mut state, &mut positions, None, Some(b"{oops")).unwrap();
        apply(&mut state, &mut positions, Some(b"p"), None).unwrap();
        assert_eq!(state.held(), 0);
        assert_eq!(positions, Positions::default());
    }
}
