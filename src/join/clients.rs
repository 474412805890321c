//! The joiner's Kafka clients, made from its [`Settings`]: the group consumer over both
//! inputs, the reader that restores state and fetches review records by offset, and one
//! transactional producer per input partition.

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::producer::BaseProducer;
use rdkafka::ClientConfig;

use super::JoinConfig;
use super::state::Rules;
use crate::kafka::{KafkaConfig, ReaderContext, client_config};

/// What the joiner needs from the configuration, resolved once.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub kafka: KafkaConfig,
    pub bootstrap: String,
    pub group_id: String,
    pub review_topic: String,
    pub completed_topic: String,
    pub state_topic: String,
    pub retraining_topic: String,
    pub dead_letter_topic: String,
    pub rules: Rules,
}

impl Settings {
    pub fn new(join: &JoinConfig, kafka: &KafkaConfig, bootstrap: &str) -> Settings {
        Settings {
            kafka: kafka.clone(),
            bootstrap: bootstrap.to_owned(),
            group_id: join.group_id.clone(),
            review_topic: kafka.review_topic.clone(),
            completed_topic: kafka.completed_topic.clone(),
            state_topic: state_topic_name(&join.group_id),
            retraining_topic: kafka.retraining_topic.clone(),
            dead_letter_topic: kafka.dead_letter_topic.clone(),
            rules: Rules::from_config(join),
        }
    }

    /// The group member over both inputs. The caller's `context` handles its rebalances.
    pub fn consumer<C: ConsumerContext>(&self, context: C) -> Result<BaseConsumer<C>, KafkaError> {
        // The first poll after an assignment must see records from every partition quickly;
        // librdkafka's defaults are fine for the rest.
        let mut client = self.read_committed("reviewloop-join", "100");
        // Not overridable: offsets are committed in the producing transaction only, and the
        // range assignor is what gives one member the same partition of both co-partitioned
        // topics.
        client
            .set("group.id", &self.group_id)
            .set("partition.assignment.strategy", "range");
        client.create_with_context(context)
    }

    /// A consumer that is assigned partitions by hand and reports their end.
    pub fn reader(&self) -> Result<BaseConsumer<ReaderContext>, KafkaError> {
        let mut client = self.read_committed("reviewloop-join-reader", "50");
        // librdkafka wants a group for assign(); this one never joins or commits.
        client
            .set("group.id", format!("{}-reader", self.group_id))
            .set("enable.partition.eof", "true");
        client.create_with_context(ReaderContext::new("the joiner's reader"))
    }

    /// The producer of `partition`'s transactions, under that partition's transactional id.
    pub fn producer(&self, partition: i32) -> Result<BaseProducer, KafkaError> {
        let mut client = client_config(
            &self.kafka,
            &self.bootstrap,
            &[
                ("client.id", "reviewloop-join"),
                ("linger.ms", "5"),
                ("transaction.timeout.ms", "60000"),
            ],
        );
        client.set(
            "transactional.id",
            transactional_id(&self.group_id, partition),
        );
        client.create()
    }

    /// A consumer configuration that never commits by itself and never sees aborted input
    /// (the state must never include it): not overridable by `kafka.options`.
    fn read_committed(&self, client_id: &str, fetch_wait_ms: &str) -> ClientConfig {
        let mut client = client_config(
            &self.kafka,
            &self.bootstrap,
            &[
                ("client.id", client_id),
                ("auto.offset.reset", "earliest"),
                ("fetch.wait.max.ms", fetch_wait_ms),
            ],
        );
        client
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed");
        client
    }
}

/// The compacted topic holding the joiner's state: `<group_id>-state`, with characters Kafka
/// does not allow in topic names replaced by `_`.
pub fn state_topic_name(group_id: &str) -> String {
    let clean: String = group_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{clean}-state")
}

/// One transactional id per input partition: whoever owns the partition next initialises the
/// same id, which aborts a crashed owner's open transaction and fences it for good.
pub fn transactional_id(group_id: &str, partition: i32) -> String {
    format!("{group_id}-join-{partition}")
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_topic_names_are_valid_topic_names() {
        assert_eq!(state_topic_name("reviewloop-join"), "reviewloop-join-state");
        assert_eq!(state_topic_name("team a/join"), "team_a_join-state");
    }
}
