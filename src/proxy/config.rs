//! `[server]`: where the proxy and the admin server listen, and the proxy's limits.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Problem, duration, require, shown};

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
    /// A new connection's first request head, and any later head once its first byte arrived,
    /// must be read whole within this (slowloris).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in progress and no byte received is closed
    /// after this.
    #[serde(with = "duration")]
    pub keepalive_timeout: Duration,
    /// The longest wait between two reads of a request body (slow uploads) ⇒ 408.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// The longest a write to a client may stay blocked (a client that does not read).
    #[serde(with = "duration")]
    pub send_timeout: Duration,
    /// Open client connections at most; beyond it a new connection is closed at once.
    pub max_connections: usize,
    /// The largest request head (HTTP/1.1) or header list (HTTP/2) ⇒ 431.
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    #[serde(with = "duration")]
    pub h2_keepalive_interval: Duration,
    #[serde(with = "duration")]
    pub h2_keepalive_timeout: Duration,
    /// Streams a client may reset before the proxy accepted them (CVE-2023-44487, rapid
    /// reset); beyond it the connection gets GOAWAY ENHANCE_YOUR_CALM.
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams the proxy may reset because of the client's protocol errors (CVE-2025-8671,
    /// "MadeYouReset") before it closes the connection.
    pub h2_max_local_error_reset_streams: usize,
    /// How the proxy's connections are served: see [`RuntimeModel`].
    pub runtime: RuntimeModel,
    /// Serving threads; 0 = one per core the process may run on.
    pub threads: usize,
}

/// How the proxy schedules its connections (`server.runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeModel {
    /// `server.threads` single-threaded runtimes, each accepting its own connections on its
    /// own `SO_REUSEPORT` listener and keeping its own upstream connections: a request and its
    /// upstream call never change threads. The rest of the process (admin, Kafka, the joiner,
    /// the console) runs on a separate runtime.
    ThreadPerCore,
    /// One work-stealing runtime for everything: a connection's tasks may move between
    /// threads, which costs wake-ups but evens out a few very unequal connections.
    MultiThread,
}

/// hyper's smallest HTTP/1 read buffer: a request head limit below it cannot be enforced.
pub const MIN_HEADER_BYTES: usize = 8192;

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
            header_read_timeout: default_header_read_timeout(),
            keepalive_timeout: Duration::from_secs(75),
            body_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(),
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 128,
            h2_keepalive_interval: Duration::from_secs(30),
            h2_keepalive_timeout: Duration::from_secs(20),
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            runtime: RuntimeModel::ThreadPerCore,
            threads: 0,
        }
    }
}

/// A sanity bound on `threads`: each serving thread has its own runtime, listener and
/// upstream connections, so a typo like 10000 would exhaust descriptors, not scale.
const MAX_THREADS: usize = 1024;

/// nginx's `client_header_timeout` is 60 s, sized for people on slow links; a sidecar's clients
/// (a load balancer, SageMaker, services in the same network) send a head in one packet.
const fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}

/// Each client connection may hold a pooled upstream connection too: 4096 clients need about
/// 8200 descriptors, well under the 65536 or more container runtimes allow; lower it where
/// `ulimit -n` is smaller.
const fn default_max_connections() -> usize {
    4096
}

impl ServerConfig {
    /// The serving threads `threads` asks for: itself, or the cores this process may use.
    pub fn serving_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

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
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("keepalive_timeout", self.keepalive_timeout),
            ("body_read_timeout", self.body_read_timeout),
            ("send_timeout", self.send_timeout),
            ("h2_keepalive_interval", self.h2_keepalive_interval),
            ("h2_keepalive_timeout", self.h2_keepalive_timeout),
        ] {
            require(
                &mut problems,
                !value.is_zero(),
                key,
                shown(value),
                "must be longer than 0s",
            );
        }
        require(
            &mut problems,
            self.max_connections > 0,
            "max_connections",
            "0",
            "must be at least 1",
        );
        require(
            &mut problems,
            self.max_header_bytes >= MIN_HEADER_BYTES && self.max_header_bytes <= u32::MAX as usize,
            "max_header_bytes",
            self.max_header_bytes.to_string(),
            "must be at least 8192 (hyper's smallest read buffer) and fit in 32 bits",
        );
        require(
            &mut problems,
            self.h2_max_concurrent_streams > 0,
            "h2_max_concurrent_streams",
            "0",
            "must be at least 1",
        );
        require(
            &mut problems,
            self.threads <= MAX_THREADS,
            "threads",
            self.threads.to_string(),
            "must be at most 1024 (0 = one per available core)",
        );
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_zero_limits_are_named() {
        assert!(ServerConfig::default().check().is_empty());
        let bad = ServerConfig {
            header_read_timeout: Duration::ZERO,
            max_connections: 0,
            max_header_bytes: 4096,
            h2_max_concurrent_streams: 0,
            ..ServerConfig::default()
        };
        let keys: Vec<String> = bad.check().iter().map(|p| p.key.clone()).collect();
        assert_eq!(
            keys,
            [
                "header_read_timeout",
                "max_connections",
                "max_header_bytes",
                "h2_max_concurrent_streams"
            ]
        );
    }
}
