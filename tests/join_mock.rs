//! The joiner over librdkafka's mock cluster: joining, consolidation, dead letters, timeouts,
//! restarts and rebalances. (The mock cluster accepts transactions but shows aborted records
//! to `read_committed` consumers, so crash-time exactly-once is shown on a real broker, in
//! `join_broker.rs` and `join_crash.rs`.)

mod join_support;

use join_support::{Cluster, scenarios};
use reviewloop::config::Config;
use reviewloop::join::{self, JoinError};
use reviewloop::metrics::Metrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_interleaving_joins_exactly_once() {
    scenarios::any_interleaving_joins_exactly_once(&Cluster::mock(), 200, 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn majority_of_three() {
    scenarios::majority_of_three(&Cluster::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanimous_with_a_dissent() {
    scenarios::unanimous_with_a_dissent(&Cluster::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_becomes_dead_letters() {
    scenarios::garbage_becomes_dead_letters(&Cluster::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_give_expired_and_orphan() {
    scenarios::timeouts_give_expired_and_orphan(&Cluster::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_pending_reviews() {
    scenarios::restart_keeps_pending_reviews(&Cluster::mock()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalances_lose_and_duplicate_nothing() {
    scenarios::rebalances_lose_and_duplicate_nothing(&Cluster::mock(), 150).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_inputs_that_are_not_co_partitioned() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let mut config = Config::default();
    config.kafka.review_topic = "x.review".into();
    config.kafka.completed_topic = "x.completed".into();
    config.kafka.retraining_topic = "x.retraining".into();
    config.kafka.dead_letter_topic = "x.dead-letter".into();
    config.kafka.create_topics = false;
    let run = |config: Config, bootstrap: String| async move {
        join::run(
            &config.join,
            &config.kafka,
            &bootstrap,
            std::sync::Arc::new(Metrics::new()),
            std::future::pending(),
        )
        .await
        .unwrap_err()
    };
    cluster.create_topic("x.review", 3, 1).unwrap();
    let error = run(config.clone(), cluster.bootstrap_servers()).await;
    assert!(
        matches!(error, JoinError::MissingTopics(ref topics) if topics.len() == 3),
        "{error}"
    );
    cluster.create_topic("x.completed", 2, 1).unwrap();
    cluster.create_topic("x.retraining", 1, 1).unwrap();
    cluster.create_topic("x.dead-letter", 1, 1).unwrap();
    let error = run(config, cluster.bootstrap_servers()).await;
    assert!(
        matches!(
            error,
            JoinError::NotCoPartitioned {
                review_partitions: 3,
                completed_partitions: 2,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("must be co-partitioned"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_backlog_then_answers() {
    scenarios::pending_backlog_then_answers(
        &Cluster::mock(),
        std::env::var("BACKLOG_N")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(3000),
    )
    .await;
}
