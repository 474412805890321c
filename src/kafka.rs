//! Kafka plumbing shared by the proxy's review sink and the joiner: client configuration,
//! the embedded broker (`kafka.brokers = "embedded"`), CloudEvents record headers, listing
//! and creating topics (the startup check [`ensure_topics`]) and the review sink
//! ([`ReviewSink`]) with its disk spool (`spool`).

mod answers;
mod config;
mod sink;
mod spool;
mod topics;

pub use self::answers::AnswerPublisher;
pub use self::config::{Delivery, EMBEDDED_BROKERS, KafkaConfig, is_secret_option};
pub use self::sink::{RecordMeta, ReviewSink};
#[cfg(feature = "test-util")]
pub use self::sink::SinkError;
pub(crate) use self::topics::{TopicAdmin, TopicSpec};
pub use self::topics::{ensure_topics, topic_names};

use std::sync::mpsc;
use std::thread;

use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{ClientConfig, ClientContext};

/// `ce_source` of every record reviewloop writes.
pub const CE_SOURCE: &str = "reviewloop";
pub const CE_REVIEW_REQUESTED: &str = "reviewloop.review.requested";
pub const CE_REVIEW_COMPLETED: &str = "reviewloop.review.completed";
pub const CE_RETRAINING_EXAMPLE: &str = "reviewloop.retraining.example";
pub const CE_DEAD_LETTER: &str = "reviewloop.dead-letter";

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot start the embedded broker: {0}")]
    Embedded(String),
    /// A client could not be created from the configuration (e.g. a bad `[kafka.options]`).
    #[error("{0}")]
    Config(String),
    #[error("Kafka brokers at {bootstrap} are unreachable: {source}")]
    Unreachable {
        bootstrap: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(
        "Kafka topics missing: {}; create them or set kafka.create_topics = true",
        .0.join(", ")
    )]
    MissingTopics(Vec<String>),
    #[error("the broker refused to create Kafka topics: {}", .0.join(", "))]
    CreateTopics(Vec<String>),
    #[error(transparent)]
    Client(#[from] rdkafka::error::KafkaError),
}

/// A client configuration for `bootstrap` with `kafka.options` applied last, so an operator's
/// option always wins over reviewloop's defaults.
pub fn client_config(
    config: &KafkaConfig,
    bootstrap: &str,
    defaults: &[(&str, &str)],
) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", bootstrap);
    for (key, value) in defaults {
        client.set(*key, *value);
    }
    for (key, value) in &config.options {
        client.set(key, value);
    }
    client
}

/// The context of a consumer that reads to the end of its partitions
/// (`enable.partition.eof`): librdkafka reports each end as a client-wide error too, which the
/// default context would log as one on every fetch.
pub struct ReaderContext {
    /// Names the reader in the log lines of real errors.
    what: &'static str,
}

impl ReaderContext {
    pub fn new(what: &'static str) -> ReaderContext {
        ReaderContext { what }
    }
}

impl ClientContext for ReaderContext {
    fn error(&self, error: RdKafkaError, reason: &str) {
        if matches!(error, RdKafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::debug!(reader = self.what, reason, "reached the end of a partition");
        } else {
            tracing::warn!(error = %error, reason, "librdkafka error in {}", self.what);
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// The CloudEvents Kafka binding headers (binary mode) for one record.
pub fn cloudevent_headers(ce_type: &str, id: &str, time: &str) -> OwnedHeaders {
    let ce_id = crate::ids::new_v7_string();
    cloudevent_headers_with_id(&ce_id, ce_type, id, time)
}

/// [`cloudevent_headers`] with a given `ce_id` (a record sent again is the same event).
pub fn cloudevent_headers_with_id(ce_id: &str, ce_type: &str, id: &str, time: &str) -> OwnedHeaders {
    OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: "ce_specversion",
            value: Some("1.0"),
        })
        .insert(Header {
            key: "ce_id",
            value: Some(ce_id),
        })
        .insert(Header {
            key: "ce_type",
            value: Some(ce_type),
        })
        .insert(Header {
            key: "ce_source",
            value: Some(CE_SOURCE),
        })
        .insert(Header {
            key: "ce_time",
            value: Some(time),
        })
        .insert(Header {
            key: "ce_subject",
            value: Some(id),
        })
        .insert(Header {
            key: "content-type",
            value: Some("application/json"),
        })
}

/// Adds the CloudEvents distributed-tracing extension (`ce_traceparent`) when there is one.
pub fn with_traceparent(headers: OwnedHeaders, traceparent: Option<&str>) -> OwnedHeaders {
    match traceparent {
        Some(value) => headers.insert(Header {
            key: "ce_traceparent",
            value: Some(value),
        }),
        None => headers,
    }
}

/// An in-process broker (librdkafka's mock cluster) for trying reviewloop without Kafka.
///
/// The mock cluster is not `Send`, so it lives on a thread of its own until this handle drops.
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster with `topics` created, each with `partitions` partitions.
    pub fn start(topics: &[&str], partitions: i32) -> Result<EmbeddedBroker, KafkaError> {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match rdkafka::mocking::MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for topic in &topics {
                    if let Err(e) = cluster.create_topic(topic, partitions, 1) {
                        let _ = ready_tx.send(Err(format!("topic {topic}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Serve until the handle drops (or its sender is gone).
                let _ = stop_rx.recv();
                drop(cluster);
            })
            .map_err(|e| KafkaError::Embedded(e.to_string()))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| KafkaError::Embedded("the broker thread exited".into()))?
            .map_err(KafkaError::Embedded)?;
        // The commands log the address at info level (app.rs); this is for library users.
        tracing::debug!(
            bootstrap = %bootstrap,
            "embedded Kafka broker (librdkafka's mock cluster) listening on loopback; \
             point kcat or any Kafka client at it, e.g. kcat -b {bootstrap} -L"
        );
        Ok(EmbeddedBroker {
            bootstrap,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
