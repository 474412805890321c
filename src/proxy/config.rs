//! `[server]`: where the proxy and the admin server listen, and the proxy's limits.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Problem, duration};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_inspect_bytes: usize,
    pub max_in_flight: usize,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// `/readyz` also waits for the Kafka producer to reach a broker. Off by default: a pod
    /// that is not ready gets no inference, and reviews are a side channel.
    pub ready_requires_kafka: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            // 8080 is the port SageMaker sends container traffic to.
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            max_inspect_bytes: 4 * 1024 * 1024,
            max_in_flight: 1024,
            shutdown_grace: Duration::from_secs(30),
            ready_requires_kafka: false,
        }
    }
}

impl ServerConfig {
    /// Every problem with the values, keys relative to `[server]`.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.max_inspect_bytes == 0 {
            problems.push(Problem::new("max_inspect_bytes", "0", "must be at least 1"));
        }
        if self.max_in_flight == 0 {
            problems.push(Problem::new("max_in_flight", "0", "must be at least 1"));
        }
        if self.listen == self.admin_listen && self.listen.port() != 0 {
            problems.push(Problem::new(
                "admin_listen",
                self.admin_listen.to_string(),
                "must differ from server.listen: metrics never share the data port",
            ));
        }
        problems
    }
}
