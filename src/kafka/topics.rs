//! Startup check of reviewloop's four topics (review, completed, retraining, dead-letter):
//! present, or created when `kafka.create_topics` is true and the broker allows it.
//!
//! The check lists the cluster's topics (a metadata request for *all* topics), because asking
//! for one topic by name makes brokers with auto-creation enabled create it with their default
//! partition count, behind the operator's back. Missing topics are created with
//! `kafka.topic_partitions` partitions and `kafka.topic_replication` replicas (-1: the broker's
//! default). A topic that another replica created in the meantime counts as present.
//!
//! With `create_topics = false` a missing topic is an error naming it; so is a broker that
//! refuses to create one (no permission, a policy, or no CreateTopics support, as with
//! librdkafka's mock cluster, whose topics `EmbeddedBroker` creates itself). The caller decides
//! what an error means: the proxy logs it and keeps serving (reviews are a side channel).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use super::KafkaConfig;
use super::{KafkaError, client_config};

/// What [`ensure_topics`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicsReport {
    /// Topics that were there already.
    pub existing: Vec<String>,
    /// Topics this call created.
    pub created: Vec<String>,
}

/// reviewloop's topics, in the order they are reported.
pub fn topic_names(config: &KafkaConfig) -> [&str; 4] {
    [
        config.review_topic.as_str(),
        config.completed_topic.as_str(),
        config.retraining_topic.as_str(),
        config.dead_letter_topic.as_str(),
    ]
}

/// Checks that the four topics exist and creates the missing ones when configured to.
/// `timeout` bounds each broker round trip (listing, then creating).
pub async fn ensure_topics(
    config: &KafkaConfig,
    bootstrap: &str,
    timeout: Duration,
) -> Result<TopicsReport, KafkaError> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        client_config(config, bootstrap, &[("client.id", "reviewloop-admin")])
            .create()
            .map_err(|e| {
                KafkaError::Config(format!("cannot create the Kafka admin client: {e}"))
            })?,
    );
    let unreachable = |source| KafkaError::Unreachable {
        bootstrap: bootstrap.to_owned(),
        source,
    };
    // The metadata call blocks; keep it off the async workers.
    let lister = Arc::clone(&admin);
    let metadata =
        tokio::task::spawn_blocking(move || lister.inner().fetch_metadata(None, timeout))
            .await
            .map_err(|e| KafkaError::Config(format!("the topic check panicked: {e}")))?
            .map_err(unreachable)?;
    let listed: Vec<&str> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    let mut report = TopicsReport::default();
    let mut missing = Vec::new();
    for name in topic_names(config) {
        if listed.contains(&name) {
            report.existing.push(name.to_owned());
        } else if !missing.contains(&name) {
            missing.push(name);
        }
    }
    if missing.is_empty() {
        return Ok(report);
    }
    if !config.create_topics {
        return Err(KafkaError::MissingTopics(
            missing.into_iter().map(str::to_owned).collect(),
        ));
    }
    let new_topics: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|name| NewTopic {
            name,
            num_partitions: config.topic_partitions,
            replication: TopicReplication::Fixed(config.topic_replication),
            config: Vec::new(),
        })
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(timeout))
        .operation_timeout(Some(timeout));
    // The broker answered the listing, so a failed request here is the broker not creating
    // (e.g. a timeout from a broker without CreateTopics support), not an outage.
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|e| {
            KafkaError::CreateTopics(missing.iter().map(|name| format!("{name} ({e})")).collect())
        })?;
    let mut refused = Vec::new();
    for result in results {
        match result {
            Ok(name) => report.created.push(name),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => report.existing.push(name),
            Err((name, code)) => refused.push(format!("{name} ({code})")),
        }
    }
    if !refused.is_empty() {
        return Err(KafkaError::CreateTopics(refused));
    }
    for name in &report.created {
        tracing::info!(
            topic = %name,
            partitions = config.topic_partitions,
            replication = config.topic_replication,
            "created Kafka topic"
        );
    }
    Ok(report)
}
