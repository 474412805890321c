//! Topics on the cluster: listing them with their partition counts ([`TopicAdmin`]),
//! creating the missing ones from [`TopicSpec`]s, and the proxy's startup check of
//! reviewloop's four topics (review, completed, retraining, dead-letter) built on both
//! ([`ensure_topics`]). The joiner uses the same two steps for its own checks.
//!
//! Listing asks for *all* topics, because asking for one topic by name makes brokers with
//! auto-creation enabled create it with their default partition count, behind the operator's
//! back. A topic that another process created in the meantime counts as present.
//!
//! In the startup check, missing topics are created with `kafka.topic_partitions` partitions
//! and `kafka.topic_replication` replicas (-1: the broker's default). With
//! `create_topics = false` a missing topic is an error naming it; so is a broker that refuses
//! to create one (no permission, a policy, or no CreateTopics support, as with librdkafka's
//! mock cluster, whose topics `EmbeddedBroker` creates itself). The caller decides what an
//! error means: the proxy logs it and keeps serving (reviews are a side channel).

use std::collections::BTreeMap;
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

/// A topic and how to create it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Replicas per partition; -1 is the broker's default.
    pub replication: i32,
    /// Topic configuration entries, e.g. `cleanup.policy = compact`.
    pub config: Vec<(&'static str, &'static str)>,
}

impl TopicSpec {
    /// A topic with the broker's default configuration.
    pub fn new(name: &str, partitions: i32, replication: i32) -> TopicSpec {
        TopicSpec {
            name: name.to_owned(),
            partitions,
            replication,
            config: Vec::new(),
        }
    }

    pub fn with(mut self, key: &'static str, value: &'static str) -> TopicSpec {
        self.config.push((key, value));
        self
    }
}

/// An admin client for listing and creating topics; `timeout` bounds each broker round trip.
pub(crate) struct TopicAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    bootstrap: String,
    timeout: Duration,
}

impl TopicAdmin {
    pub fn new(
        config: &KafkaConfig,
        bootstrap: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<TopicAdmin, KafkaError> {
        let admin = client_config(config, bootstrap, &[("client.id", client_id)])
            .create()
            .map_err(|e| {
                KafkaError::Config(format!("cannot create the Kafka admin client: {e}"))
            })?;
        Ok(TopicAdmin {
            admin: Arc::new(admin),
            bootstrap: bootstrap.to_owned(),
            timeout,
        })
    }

    /// The partition count of every topic on the cluster (topics the broker reports with an
    /// error or without partitions are left out).
    pub async fn partition_counts(&self) -> Result<BTreeMap<String, usize>, KafkaError> {
        // The metadata call blocks; keep it off the async workers.
        let (lister, timeout) = (Arc::clone(&self.admin), self.timeout);
        let metadata =
            tokio::task::spawn_blocking(move || lister.inner().fetch_metadata(None, timeout))
                .await
                .map_err(|e| KafkaError::Config(format!("the topic listing panicked: {e}")))?
                .map_err(|source| KafkaError::Unreachable {
                    bootstrap: self.bootstrap.clone(),
                    source,
                })?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect())
    }

    /// Creates `specs` (none of them listed a moment ago). A topic another process created
    /// first is reported as existing; any other refusal is an error naming each topic.
    pub async fn create(&self, specs: &[TopicSpec]) -> Result<TopicsReport, KafkaError> {
        let mut report = TopicsReport::default();
        if specs.is_empty() {
            return Ok(report);
        }
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|spec| NewTopic {
                name: &spec.name,
                num_partitions: spec.partitions,
                replication: TopicReplication::Fixed(spec.replication),
                config: spec.config.clone(),
            })
            .collect();
        let options = AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout));
        // The broker answered the listing, so a failed request here is the broker not
        // creating (e.g. a timeout from a broker without CreateTopics support), not an outage.
        let results = self
            .admin
            .create_topics(&new_topics, &options)
            .await
            .map_err(|e| {
                KafkaError::CreateTopics(
                    specs
                        .iter()
                        .map(|spec| format!("{} ({e})", spec.name))
                        .collect(),
                )
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
        for spec in specs
            .iter()
            .filter(|spec| report.created.contains(&spec.name))
        {
            tracing::info!(
                topic = %spec.name,
                partitions = spec.partitions,
                replication = spec.replication,
                "created Kafka topic"
            );
        }
        Ok(report)
    }
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
    let admin = TopicAdmin::new(config, bootstrap, "reviewloop-admin", timeout)?;
    let listed = admin.partition_counts().await?;
    let mut report = TopicsReport::default();
    let mut missing: Vec<TopicSpec> = Vec::new();
    for name in topic_names(config) {
        if listed.contains_key(name) {
            report.existing.push(name.to_owned());
        } else if !missing.iter().any(|spec| spec.name == name) {
            missing.push(TopicSpec::new(
                name,
                config.topic_partitions,
                config.topic_replication,
            ));
        }
    }
    if missing.is_empty() {
        return Ok(report);
    }
    if !config.create_topics {
        return Err(KafkaError::MissingTopics(
            missing.into_iter().map(|spec| spec.name).collect(),
        ));
    }
    let created = admin.create(&missing).await?;
    report.created = created.created;
    report.existing.extend(created.existing);
    Ok(report)
}
