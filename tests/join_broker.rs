//! The joiner against a real broker process (`export $(scripts/kafka-broker start)`): the
//! same scenarios as over the mock cluster, with real transactions, `read_committed` and
//! group coordination.

mod join_support;

use join_support::{Cluster, scenarios};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn any_interleaving_joins_exactly_once() {
    scenarios::any_interleaving_joins_exactly_once(&Cluster::real().await, 300, 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn majority_of_three() {
    scenarios::majority_of_three(&Cluster::real().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn unanimous_with_a_dissent() {
    scenarios::unanimous_with_a_dissent(&Cluster::real().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn garbage_becomes_dead_letters() {
    scenarios::garbage_becomes_dead_letters(&Cluster::real().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn timeouts_give_expired_and_orphan() {
    scenarios::timeouts_give_expired_and_orphan(&Cluster::real().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn restart_keeps_pending_reviews() {
    scenarios::restart_keeps_pending_reviews(&Cluster::real().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn rebalances_lose_and_duplicate_nothing() {
    scenarios::rebalances_lose_and_duplicate_nothing(&Cluster::real().await, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real broker: KAFKA_BOOTSTRAP"]
async fn pending_backlog_then_answers() {
    scenarios::pending_backlog_then_answers(&Cluster::real().await, 5000).await;
}
