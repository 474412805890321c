//! `[upstream]`: which model the proxy calls, and how long it waits for it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BaseUrl, sagemaker};
use crate::settings::{Problem, duration, quoted, shown};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    Http,
    Sagemaker,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    pub kind: UpstreamKind,
    /// Base URL of the model server (`kind = "http"`); the request path and query are appended.
    pub url: String,
    #[serde(with = "duration")]
    pub timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// SageMaker only: call InvokeEndpointWithResponseStream and answer as server-sent events.
    pub response_stream: bool,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            kind: UpstreamKind::Http,
            url: "http://127.0.0.1:8081".into(),
            // SageMaker's own invocation timeout is 60 s.
            timeout: Duration::from_secs(60),
            endpoint_name: None,
            region: None,
            endpoint_url: None,
            response_stream: false,
        }
    }
}

impl UpstreamConfig {
    /// Every problem with the values, keys relative to `[upstream]`. The checks are the ones
    /// the upstream's constructors make (URL parsing, SageMaker's name pattern), without the
    /// I/O of building a client.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.timeout.is_zero() {
            problems.push(Problem::new(
                "timeout",
                shown(self.timeout),
                "must be positive",
            ));
        }
        match self.kind {
            UpstreamKind::Http => {
                if let Err(message) = BaseUrl::parse(&self.url) {
                    problems.push(Problem::new("url", quoted(&self.url), message));
                }
                if self.response_stream {
                    problems.push(Problem::new(
                        "response_stream",
                        "true",
                        "only applies to kind = \"sagemaker\"",
                    ));
                }
            }
            UpstreamKind::Sagemaker => {
                let name = self.endpoint_name.as_deref().unwrap_or("");
                if name.is_empty() {
                    problems.push(Problem::new(
                        "endpoint_name",
                        quoted(name),
                        "required when kind = \"sagemaker\"",
                    ));
                } else if let Err(message) = sagemaker::check_endpoint_name(name) {
                    problems.push(Problem::new("endpoint_name", quoted(name), message));
                }
                if let Some(url) = &self.endpoint_url
                    && let Err(message) = BaseUrl::parse(url)
                {
                    problems.push(Problem::new("endpoint_url", quoted(url), message));
                }
            }
        }
        problems
    }
}
