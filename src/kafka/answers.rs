//! Publishing reviewers' answers: completed records on the completed topic, keyed by id with
//! the producer's default partitioner (the review topic's, so the joiner finds them
//! co-partitioned), each acknowledged before the caller moves on. Used by every reviewer
//! front end (the console, the Label Studio bridge).

use std::time::{Duration, SystemTime};

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{CE_REVIEW_COMPLETED, KafkaConfig, KafkaError, client_config, cloudevent_headers};
use crate::record::{CompletedRecord, rfc3339_millis};

pub struct AnswerPublisher {
    producer: FutureProducer,
    topic: String,
    ack_timeout: Duration,
}

impl AnswerPublisher {
    /// `client_id` names the front end to the broker (`reviewloop-console`, …).
    pub fn new(
        config: &KafkaConfig,
        bootstrap: &str,
        client_id: &str,
    ) -> Result<AnswerPublisher, KafkaError> {
        // librdkafka gives up on a message when the caller stops waiting for it.
        let timeout_ms = config.ack_timeout.as_millis().max(1).to_string();
        let producer: FutureProducer = client_config(
            config,
            bootstrap,
            &[
                ("client.id", client_id),
                ("enable.idempotence", "true"),
                ("acks", "all"),
                // Someone is waiting: no batching delay.
                ("linger.ms", "0"),
                ("message.timeout.ms", timeout_ms.as_str()),
            ],
        )
        .create()
        .map_err(|e| KafkaError::Config(format!("cannot create the {client_id} producer: {e}")))?;
        Ok(AnswerPublisher {
            producer,
            topic: config.completed_topic.clone(),
            ack_timeout: config.ack_timeout,
        })
    }

    /// Sends `record` and waits for the broker's ack (at most `kafka.ack_timeout`). The
    /// CloudEvent's time is the answer's `submitted_at`, else now.
    pub async fn publish(&self, record: &CompletedRecord) -> Result<(), String> {
        let payload = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        let time = record
            .answer
            .submitted_at
            .clone()
            .unwrap_or_else(|| rfc3339_millis(SystemTime::now()));
        let headers = cloudevent_headers(CE_REVIEW_COMPLETED, &record.id, &time);
        let send = self.producer.send(
            FutureRecord::to(&self.topic)
                .key(record.id.as_str())
                .payload(&payload)
                .headers(headers),
            Duration::from_secs(1),
        );
        match tokio::time::timeout(self.ack_timeout + Duration::from_secs(1), send).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no acknowledgement within {}",
                humantime::format_duration(self.ack_timeout)
            )),
        }
    }
}
