//! Configuration: the TOML file, the `REVIEWLOOP__SECTION__KEY` environment overlay, defaults,
//! and validation that reports every bad key and value at once.
//!
//! Loading works on the raw TOML tree first so that every problem can be found in one pass:
//! each leaf the user set is tried alone on top of the defaults (an unknown key or a wrong type
//! names that key only), then the whole tree is deserialized and checked for ranges and
//! cross-field rules. Per-route `confidence`/`review` tables inherit every key they do not set
//! from the top-level tables.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Environment variables with this prefix override config keys: `REVIEWLOOP__KAFKA__BROKERS`.
pub const ENV_PREFIX: &str = "REVIEWLOOP__";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub confidence: ConfidenceConfig,
    pub review: ReviewConfig,
    pub kafka: KafkaConfig,
    pub join: JoinConfig,
    /// The reviewer console (`reviewloop console`).
    pub console: crate::console::ConsoleConfig,
    /// Optional named routes; the top-level `confidence`/`review` tables are the default route.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub max_inspect_bytes: usize,
    pub max_in_flight: usize,
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
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
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Auto,
    Huggingface,
    Sagemaker,
    Tfserving,
    #[serde(rename = "kserve-v1")]
    KserveV1,
    #[serde(rename = "kserve-v2")]
    KserveV2,
    Openai,
    Rekognition,
    Textract,
    Comprehend,
    Jmespath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Already a probability in 0..1.
    Unit,
    /// 0..100, as AWS AI services report it.
    Percent,
    /// A natural-log probability (≤ 0).
    Logprob,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Min,
    Max,
    Mean,
    /// Top-1 minus top-2 of a probability vector.
    Margin,
    /// 1 − normalised entropy of a probability vector.
    Entropy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfidenceConfig {
    pub preset: Preset,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    pub scale: Scale,
    pub aggregate: Aggregate,
}

impl Default for ConfidenceConfig {
    fn default() -> Self {
        Self {
            preset: Preset::Auto,
            expression: None,
            scale: Scale::Unit,
            aggregate: Aggregate::Min,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SampleBy {
    /// Same record id ⇒ same decision.
    Id,
    /// Same request body ⇒ same decision (A2I's behaviour).
    Input,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReviewConfig {
    pub confidence_below: f64,
    pub sample_percent: f64,
    pub sample_by: SampleBy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conditions_file: Option<PathBuf>,
    pub budget_per_second: f64,
    pub force_header: String,
}

impl Default for ReviewConfig {
    fn default() -> Self {
        Self {
            confidence_below: 0.7,
            sample_percent: 1.0,
            sample_by: SampleBy::Id,
            conditions_file: None,
            budget_per_second: 0.0,
            force_header: "x-review".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// The response never waits for Kafka.
    Async,
    /// A diverted response waits for the broker's ack.
    Sync,
}

/// librdkafka's upper bound for `queue.buffering.max.messages`.
const MAX_QUEUE_CAPACITY: usize = 2_147_483_647;

/// The value of `kafka.brokers` that starts an in-process broker.
pub const EMBEDDED_BROKERS: &str = "embedded";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub review_topic: String,
    pub completed_topic: String,
    pub retraining_topic: String,
    pub dead_letter_topic: String,
    pub delivery: Delivery,
    /// Review records not yet acked by the broker (queued, in flight or retried), at most;
    /// above it a record is skipped (`reviews_skipped_total{reason="queue_full"}`). Sets
    /// librdkafka's `queue.buffering.max.messages`; that option in `kafka.options` wins.
    pub queue_capacity: usize,
    /// `delivery = "sync"`: how long a response waits for the ack before it is sent anyway
    /// (the record stays queued and may still be delivered).
    #[serde(with = "duration")]
    pub ack_timeout: Duration,
    /// At startup, create whichever of the four topics is missing, with `topic_partitions` and
    /// `topic_replication`. Missing topics are an error either way when the broker refuses
    /// (no permission, or no CreateTopics support); the proxy logs it and keeps serving.
    /// On by default so that `reviewloop demo` and a fresh cluster work at once; turn it off
    /// where topics are provisioned by other means.
    pub create_topics: bool,
    /// Partitions of topics created at startup.
    pub topic_partitions: i32,
    /// Replication factor of topics created at startup; -1 takes the broker's default.
    pub topic_replication: i32,
    /// librdkafka properties, passed verbatim; they override reviewloop's defaults.
    pub options: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            review_topic: "reviewloop.review".into(),
            completed_topic: "reviewloop.completed".into(),
            retraining_topic: "reviewloop.retraining".into(),
            dead_letter_topic: "reviewloop.dead-letter".into(),
            delivery: Delivery::Async,
            // librdkafka's default queue.buffering.max.messages.
            queue_capacity: 100_000,
            ack_timeout: Duration::from_secs(5),
            create_topics: true,
            topic_partitions: 3,
            topic_replication: -1,
            options: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    pub fn is_embedded(&self) -> bool {
        self.brokers == EMBEDDED_BROKERS
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Agreement {
    Majority,
    Unanimous,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JoinConfig {
    pub group_id: String,
    pub reviewers_per_item: u32,
    pub agreement: Agreement,
    #[serde(with = "duration")]
    pub review_timeout: Duration,
    #[serde(with = "duration")]
    pub orphan_timeout: Duration,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            group_id: "reviewloop-join".into(),
            reviewers_per_item: 1,
            agreement: Agreement::Majority,
            // A2I's default TaskAvailabilityLifetimeInSeconds is 10 days.
            review_timeout: Duration::from_secs(10 * 24 * 3600),
            orphan_timeout: Duration::from_secs(3600),
        }
    }
}

/// A named route: requests whose path matches get their own label and decision settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// A path prefix (`/sentiment`) or a template (`/v2/models/{model}/infer`).
    pub path: String,
    pub confidence: ConfidenceConfig,
    pub review: ReviewConfig,
}

/// One problem found in a configuration: the key, the value given, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub value: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {}: {}", self.key, value, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), format_problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem found, for tests and tools; a syntax or read error is one problem.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid(problems) => problems.clone(),
            other => vec![Problem {
                key: String::new(),
                value: None,
                message: other.to_string(),
            }],
        }
    }
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Loads `path` (or the defaults when `None`) with the process environment's overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?,
            None => String::new(),
        };
        let origin = path.map_or("<defaults>".to_owned(), |p| p.display().to_string());
        Config::from_toml_with_env(&text, &origin, std::env::vars())
    }

    /// Parses `text`, applies `REVIEWLOOP__…` variables from `env`, and validates the result.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut raw: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.message().to_owned(),
        })?;
        let base = toml::Value::try_from(Config::default()).expect("defaults serialize");
        let mut problems = apply_env(&mut raw, &base, env);
        problems.extend(check_leaves(&mut raw, &base));
        inherit_route_defaults(&mut raw);
        let config: Config = toml::Value::Table(raw)
            .try_into()
            .map_err(|e: toml::de::Error| {
                ConfigError::Invalid(vec![Problem {
                    key: String::new(),
                    value: None,
                    message: e.message().to_owned(),
                }])
            })?;
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// Range and cross-field checks; every problem is reported.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: &str, value: String, message: &str| {
            problems.push(Problem {
                key: key.to_owned(),
                value: Some(value),
                message: message.to_owned(),
            })
        };
        let s = &self.server;
        if s.max_inspect_bytes == 0 {
            bad("server.max_inspect_bytes", "0".into(), "must be at least 1");
        }
        if s.max_in_flight == 0 {
            bad("server.max_in_flight", "0".into(), "must be at least 1");
        }
        if s.listen == s.admin_listen && s.listen.port() != 0 {
            bad(
                "server.admin_listen",
                s.admin_listen.to_string(),
                "must differ from server.listen: metrics never share the data port",
            );
        }
        let u = &self.upstream;
        if u.timeout.is_zero() {
            bad("upstream.timeout", "0s".into(), "must be positive");
        }
        match u.kind {
            UpstreamKind::Http => {
                if let Err(message) = check_http_url(&u.url) {
                    bad("upstream.url", quoted(&u.url), &message);
                }
                if u.response_stream {
                    bad(
                        "upstream.response_stream",
                        "true".into(),
                        "only applies to kind = \"sagemaker\"",
                    );
                }
            }
            UpstreamKind::Sagemaker => {
                let name = u.endpoint_name.as_deref().unwrap_or("");
                if name.is_empty() {
                    bad(
                        "upstream.endpoint_name",
                        quoted(name),
                        "required when kind = \"sagemaker\"",
                    );
                } else if !is_sagemaker_name(name) {
                    bad(
                        "upstream.endpoint_name",
                        quoted(name),
                        "must be 1-63 letters, digits and inner hyphens (a SageMaker endpoint name)",
                    );
                }
                if let Some(url) = &u.endpoint_url
                    && let Err(message) = check_http_url(url)
                {
                    bad("upstream.endpoint_url", quoted(url), &message);
                }
            }
        }
        check_decision("", &self.confidence, &self.review, &mut problems);
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            problems.push(Problem {
                key: "kafka.brokers".into(),
                value: Some(quoted(&k.brokers)),
                message: "must list host:port pairs, or be \"embedded\"".into(),
            });
        }
        for (key, topic) in [
            ("kafka.review_topic", &k.review_topic),
            ("kafka.completed_topic", &k.completed_topic),
            ("kafka.retraining_topic", &k.retraining_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
        ] {
            if let Err(message) = check_topic(topic) {
                problems.push(Problem {
                    key: key.into(),
                    value: Some(quoted(topic)),
                    message,
                });
            }
        }
        let mut more = |key: &str, value: String, ok: bool, message: &str| {
            if !ok {
                problems.push(Problem {
                    key: key.into(),
                    value: Some(value),
                    message: message.into(),
                });
            }
        };
        more(
            "kafka.queue_capacity",
            k.queue_capacity.to_string(),
            (1..=MAX_QUEUE_CAPACITY).contains(&k.queue_capacity),
            "must be between 1 and 2147483647 (librdkafka's queue.buffering.max.messages)",
        );
        more(
            "kafka.ack_timeout",
            humantime::format_duration(k.ack_timeout).to_string(),
            !k.ack_timeout.is_zero(),
            "must be positive",
        );
        more(
            "kafka.topic_partitions",
            k.topic_partitions.to_string(),
            k.topic_partitions >= 1,
            "must be at least 1",
        );
        more(
            "kafka.topic_replication",
            k.topic_replication.to_string(),
            k.topic_replication == -1 || k.topic_replication >= 1,
            "must be -1 (broker default) or at least 1",
        );
        let j = &self.join;
        more(
            "join.group_id",
            quoted(&j.group_id),
            !j.group_id.trim().is_empty(),
            "must not be empty",
        );
        more(
            "join.reviewers_per_item",
            j.reviewers_per_item.to_string(),
            j.reviewers_per_item >= 1,
            "must be at least 1",
        );
        more(
            "join.review_timeout",
            humantime::format_duration(j.review_timeout).to_string(),
            !j.review_timeout.is_zero(),
            "must be positive",
        );
        more(
            "join.orphan_timeout",
            humantime::format_duration(j.orphan_timeout).to_string(),
            !j.orphan_timeout.is_zero(),
            "must be positive",
        );
        let mut names = std::collections::HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            let prefix = format!("routes[{i}].");
            if route.name.trim().is_empty() {
                problems.push(Problem {
                    key: format!("{prefix}name"),
                    value: Some(quoted(&route.name)),
                    message: "every route needs a name (it is the metrics label)".into(),
                });
            } else if !names.insert(route.name.as_str()) {
                problems.push(Problem {
                    key: format!("{prefix}name"),
                    value: Some(quoted(&route.name)),
                    message: "route names must be unique".into(),
                });
            }
            if !route.path.starts_with('/') {
                problems.push(Problem {
                    key: format!("{prefix}path"),
                    value: Some(quoted(&route.path)),
                    message: "must start with '/'".into(),
                });
            } else if let Err(message) = crate::route::check_template(&route.path) {
                problems.push(Problem {
                    key: format!("{prefix}path"),
                    value: Some(quoted(&route.path)),
                    message,
                });
            }
            check_decision(&prefix, &route.confidence, &route.review, &mut problems);
        }
        problems.extend(self.console.check());
        problems
    }

    /// The effective configuration as TOML, with secret-looking Kafka options masked.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for (key, value) in shown.kafka.options.iter_mut() {
            if is_secret_option(key) {
                *value = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&shown).expect("config serializes")
    }
}

/// librdkafka properties whose values must never be printed or logged.
pub fn is_secret_option(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password") || key.contains("secret") || key.ends_with(".pem")
}

fn check_decision(
    prefix: &str,
    confidence: &ConfidenceConfig,
    review: &ReviewConfig,
    problems: &mut Vec<Problem>,
) {
    let mut bad = |key: &str, value: String, message: &str| {
        problems.push(Problem {
            key: format!("{prefix}{key}"),
            value: Some(value),
            message: message.to_owned(),
        })
    };
    match (confidence.preset, confidence.expression.as_deref()) {
        (Preset::Jmespath, None) | (Preset::Jmespath, Some("")) => bad(
            "confidence.expression",
            "\"\"".into(),
            "required when preset = \"jmespath\"",
        ),
        (Preset::Jmespath, Some(expression)) => {
            if let Err(e) = jmespath::compile(expression) {
                bad(
                    "confidence.expression",
                    quoted(expression),
                    &format!("not a valid JMESPath expression: {e}"),
                );
            }
        }
        (_, Some(expression)) => bad(
            "confidence.expression",
            quoted(expression),
            "only used with preset = \"jmespath\"",
        ),
        (_, None) => {}
    }
    let below = review.confidence_below;
    if !(0.0..=1.0).contains(&below) {
        bad(
            "review.confidence_below",
            below.to_string(),
            "must be between 0 and 1",
        );
    }
    let sample = review.sample_percent;
    if !(0.0..=100.0).contains(&sample) {
        bad(
            "review.sample_percent",
            sample.to_string(),
            "must be between 0 and 100",
        );
    }
    let budget = review.budget_per_second;
    if !(budget >= 0.0 && budget.is_finite()) {
        bad(
            "review.budget_per_second",
            budget.to_string(),
            "must be 0 (unlimited) or a positive rate",
        );
    }
    if http::HeaderName::from_bytes(review.force_header.as_bytes()).is_err() {
        bad(
            "review.force_header",
            quoted(&review.force_header),
            "not a valid HTTP header name",
        );
    }
    if let Some(path) = &review.conditions_file {
        let shown = quoted(&path.display().to_string());
        match std::fs::read(path) {
            Err(_) if !path.is_file() => bad("review.conditions_file", shown, "no such file"),
            Err(e) => bad(
                "review.conditions_file",
                shown,
                &format!("cannot read: {e}"),
            ),
            // Each problem of the file, by its JSON path (`$.Conditions[1].And[0]: …`).
            Ok(text) => {
                for problem in crate::conditions::parse(&text).err().unwrap_or_default() {
                    bad(
                        "review.conditions_file",
                        shown.clone(),
                        &problem.to_string(),
                    );
                }
            }
        }
    }
}

/// SageMaker's endpoint name pattern, `^[a-zA-Z0-9](-*[a-zA-Z0-9])*$`, at most 63 characters.
fn is_sagemaker_name(name: &str) -> bool {
    name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn check_http_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a valid URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => return Err(format!("scheme {other:?} is not supported; use http://")),
        None => return Err("must be an absolute http:// URL".into()),
    }
    if uri.host().is_none() {
        return Err("has no host".into());
    }
    Ok(())
}

fn check_topic(topic: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || !topic.chars().all(valid) {
        return Err("Kafka topic names are 1–249 characters of [a-zA-Z0-9._-]".into());
    }
    Ok(())
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// Applies `REVIEWLOOP__SECTION__KEY=value` overrides. Under `kafka.options`, `_` in the key
/// becomes `.` (`REVIEWLOOP__KAFKA__OPTIONS__COMPRESSION_TYPE` ⇒ `compression.type`), since dots
/// are awkward in variable names and librdkafka property names use none.
fn apply_env(
    raw: &mut toml::Table,
    base: &toml::Value,
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut vars: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect();
    vars.sort();
    for (name, value) in vars {
        let mut path: Vec<String> = name[ENV_PREFIX.len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if path.iter().any(|s| s.is_empty()) || path.len() < 2 {
            problems.push(Problem {
                key: name.clone(),
                value: None,
                message: "environment overrides are named REVIEWLOOP__SECTION__KEY".into(),
            });
            continue;
        }
        if path.len() == 3 && path[0] == "kafka" && path[1] == "options" {
            path[2] = path[2].replace('_', ".");
        }
        let target_is_string = lookup(base, &path).is_none_or(|v| v.is_str());
        let parsed = if target_is_string {
            toml::Value::String(value.clone())
        } else {
            parse_scalar(&value)
        };
        if let Err(message) = set_path(raw, &path, parsed) {
            problems.push(Problem {
                key: name,
                value: Some(quoted(&value)),
                message,
            });
        }
    }
    problems
}

/// An environment value as TOML would read it (`42`, `0.5`, `true`, `[…]`), else a string.
fn parse_scalar(value: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()))
}

fn lookup<'a>(value: &'a toml::Value, path: &[String]) -> Option<&'a toml::Value> {
    path.iter()
        .try_fold(value, |v, key| v.as_table().and_then(|t| t.get(key)))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("path is not empty");
    let mut current = table;
    for key in parents {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("{key} is not a table"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// A leaf the user set, with its dotted key for messages and its path in the tree.
struct Leaf<'a> {
    key: String,
    path: Vec<PathStep>,
    value: &'a toml::Value,
}

#[derive(Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

/// Tables whose keys are free-form (passed through), so they are checked as one value.
const OPEN_TABLES: &[&str] = &["kafka.options"];

fn collect_leaves<'a>(
    table: &'a toml::Table,
    key: &str,
    path: &[PathStep],
    out: &mut Vec<Leaf<'a>>,
) {
    for (name, value) in table {
        let dotted = if key.is_empty() {
            name.clone()
        } else {
            format!("{key}.{name}")
        };
        let mut here = path.to_vec();
        here.push(PathStep::Key(name.clone()));
        match value {
            toml::Value::Table(inner) if !OPEN_TABLES.contains(&dotted.as_str()) => {
                collect_leaves(inner, &dotted, &here, out)
            }
            toml::Value::Array(items)
                if dotted == "routes" && items.iter().all(toml::Value::is_table) =>
            {
                for (i, item) in items.iter().enumerate() {
                    let mut at = here.clone();
                    at.push(PathStep::Index(i));
                    let item = item.as_table().expect("checked above");
                    collect_leaves(item, &format!("{dotted}[{i}]"), &at, out);
                }
            }
            _ => out.push(Leaf {
                key: dotted,
                path: here,
                value,
            }),
        }
    }
}

/// Tries each leaf alone on top of the defaults, so that each unknown key or bad value is
/// reported under its own name instead of serde stopping at the first. Bad leaves are removed
/// from `raw` (their defaults apply) so the rest can still be range-checked in the same pass.
fn check_leaves(raw: &mut toml::Table, base: &toml::Value) -> Vec<Problem> {
    let mut leaves = Vec::new();
    collect_leaves(raw, "", &[], &mut leaves);
    let mut problems = Vec::new();
    let mut bad_paths = Vec::new();
    for leaf in leaves {
        let mut trial = base.clone();
        place(&mut trial, &leaf.path, leaf.value.clone());
        if let Err(e) = trial.try_into::<Config>() {
            problems.push(Problem {
                key: leaf.key,
                value: Some(leaf.value.to_string()),
                message: e.message().trim().to_owned(),
            });
            bad_paths.push(leaf.path);
        }
    }
    for path in bad_paths {
        remove_leaf(raw, &path);
    }
    problems
}

fn remove_leaf(table: &mut toml::Table, path: &[PathStep]) {
    let mut node: Option<&mut toml::Value> = None;
    let (last, parents) = path.split_last().expect("a leaf has a path");
    for step in parents {
        let next = match (node, step) {
            (None, PathStep::Key(k)) => table.get_mut(k),
            (Some(toml::Value::Table(t)), PathStep::Key(k)) => t.get_mut(k),
            (Some(toml::Value::Array(a)), PathStep::Index(i)) => a.get_mut(*i),
            _ => None,
        };
        let Some(next) = next else { return };
        node = Some(next);
    }
    match (node, last) {
        (None, PathStep::Key(k)) => {
            table.remove(k);
        }
        (Some(toml::Value::Table(t)), PathStep::Key(k)) => {
            t.remove(k);
        }
        _ => {}
    }
}

/// Sets `value` at `path` inside `tree`, creating tables and array slots as needed.
fn place(tree: &mut toml::Value, path: &[PathStep], value: toml::Value) {
    let Some((step, rest)) = path.split_first() else {
        *tree = value;
        return;
    };
    let child = match step {
        PathStep::Key(key) => {
            if !tree.is_table() {
                *tree = toml::Value::Table(toml::Table::new());
            }
            let table = tree.as_table_mut().expect("made a table");
            let empty = if matches!(rest.first(), Some(PathStep::Index(_))) {
                toml::Value::Array(Vec::new())
            } else {
                toml::Value::Table(toml::Table::new())
            };
            table.entry(key.clone()).or_insert(empty)
        }
        PathStep::Index(_) => {
            // Each leaf is tried alone, so the one array element it lives in is enough.
            if !tree.is_array() {
                *tree = toml::Value::Array(Vec::new());
            }
            let items = tree.as_array_mut().expect("made an array");
            if items.is_empty() {
                items.push(toml::Value::Table(toml::Table::new()));
            }
            &mut items[0]
        }
    };
    place(child, rest, value);
}

/// Routes inherit every `confidence`/`review` key they do not set from the top-level tables.
fn inherit_route_defaults(raw: &mut toml::Table) {
    let top: Vec<(&str, toml::Table)> = ["confidence", "review"]
        .into_iter()
        .map(|section| {
            let table = raw
                .get(section)
                .and_then(toml::Value::as_table)
                .cloned()
                .unwrap_or_default();
            (section, table)
        })
        .collect();
    let Some(routes) = raw.get_mut("routes").and_then(toml::Value::as_array_mut) else {
        return;
    };
    for route in routes.iter_mut().filter_map(toml::Value::as_table_mut) {
        for (section, defaults) in &top {
            let entry = route
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(table) = entry.as_table_mut() {
                for (key, value) in defaults {
                    table.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
        }
    }
}

/// Durations as humane strings: `"30s"`, `"1h"`, `"10d"`, `"250ms"`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            D::Error::custom(format!(
                "{text:?} is not a duration ({e}); write e.g. \"30s\", \"1h\", \"10d\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, "test.toml", Vec::new())
    }

    fn load_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_with_env(text, "test.toml", env)
    }

    fn problem_keys(err: ConfigError) -> Vec<String> {
        err.problems().into_iter().map(|p| p.key).collect()
    }

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config = load("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.join.review_timeout, Duration::from_secs(864_000));
    }

    #[test]
    fn every_mistake_is_reported_not_just_the_first() {
        let err = load(
            r#"
            [server]
            max_in_flight = "many"
            listn = "0.0.0.0:1"
            [review]
            confidence_below = 1.5
            [kafka]
            delivery = "eventually"
            "#,
        )
        .unwrap_err();
        let mut keys = problem_keys(err);
        keys.sort();
        assert_eq!(
            keys,
            [
                "kafka.delivery",
                "review.confidence_below",
                "server.listn",
                "server.max_in_flight"
            ]
        );
        let err = load("[review]\nconfidence_below = 1.5\nsample_percent = 101\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("review.confidence_below = 1.5"), "{text}");
        assert!(text.contains("review.sample_percent = 101"), "{text}");
    }

    #[test]
    fn environment_overrides_file_values_with_typed_parsing() {
        let config = load_env(
            "[kafka]\nbrokers = \"file:9092\"\n",
            &[
                ("REVIEWLOOP__KAFKA__BROKERS", "k1:9092,k2:9092"),
                ("REVIEWLOOP__REVIEW__SAMPLE_PERCENT", "12.5"),
                ("REVIEWLOOP__JOIN__GROUP_ID", "123"),
                ("REVIEWLOOP__KAFKA__OPTIONS__COMPRESSION_TYPE", "zstd"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(config.review.sample_percent, 12.5);
        assert_eq!(config.join.group_id, "123");
        assert_eq!(config.kafka.options["compression.type"], "zstd");
    }

    #[test]
    fn bad_environment_values_are_named_by_their_key() {
        let err = load_env("", &[("REVIEWLOOP__SERVER__MAX_IN_FLIGHT", "lots")]).unwrap_err();
        assert_eq!(problem_keys(err), ["server.max_in_flight"]);
    }

    #[test]
    fn routes_inherit_unset_keys_from_the_top_level() {
        let config = load(
            r#"
            [review]
            sample_percent = 5.0
            [[routes]]
            name = "sentiment"
            path = "/v2/models/{model}/infer"
            review = { confidence_below = 0.9 }
            "#,
        )
        .unwrap();
        let route = &config.routes[0];
        assert_eq!(route.review.confidence_below, 0.9);
        assert_eq!(route.review.sample_percent, 5.0);
        assert_eq!(route.confidence.preset, Preset::Auto);
    }

    #[test]
    fn route_mistakes_name_the_route_index() {
        let err = load(
            r#"
            [[routes]]
            name = "a"
            path = "/a"
            [[routes]]
            name = "a"
            path = "b"
            review = { confidence_below = "low" }
            "#,
        )
        .unwrap_err();
        assert_eq!(
            problem_keys(err),
            [
                "routes[1].review.confidence_below",
                "routes[1].name",
                "routes[1].path"
            ]
        );
    }

    #[test]
    fn sagemaker_needs_an_endpoint_and_jmespath_an_expression() {
        let err = load("[upstream]\nkind = \"sagemaker\"\n[confidence]\npreset = \"jmespath\"\n")
            .unwrap_err();
        assert_eq!(
            problem_keys(err),
            ["upstream.endpoint_name", "confidence.expression"]
        );
        let err = load("[upstream]\nkind = \"sagemaker\"\nendpoint_name = \"my_endpoint\"\n")
            .unwrap_err();
        assert!(err.to_string().contains("SageMaker endpoint name"), "{err}");
        load("[upstream]\nkind = \"sagemaker\"\nendpoint_name = \"my-endpoint-2\"\n").unwrap();
        let err = load("[confidence]\npreset = \"jmespath\"\nexpression = \"a[\"\n").unwrap_err();
        assert!(err.to_string().contains("not a valid JMESPath"), "{err}");
    }

    #[test]
    fn a_conditions_file_is_checked_with_the_json_path_of_each_problem() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conditions.json");
        std::fs::write(
            &file,
            r#"{"Conditions": [{"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 0}}]}"#,
        )
        .unwrap();
        let text = format!(
            "[review]\nconditions_file = {:?}\n",
            file.display().to_string()
        );
        let err = load(&text).unwrap_err();
        assert_eq!(problem_keys(err), ["review.conditions_file"]);
        let err = load(&text).unwrap_err().to_string();
        assert!(
            err.contains("$.Conditions[0].ConditionParameters.RandomSamplingPercentage"),
            "{err}"
        );
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/conditions.example.json"
        );
        assert!(load(&format!("[review]\nconditions_file = {example:?}\n")).is_ok());
    }

    #[test]
    fn durations_read_as_humans_write_them() {
        let config =
            load("[join]\nreview_timeout = \"2h 30m\"\norphan_timeout = \"90s\"\n").unwrap();
        assert_eq!(config.join.review_timeout, Duration::from_secs(9000));
        assert_eq!(config.join.orphan_timeout, Duration::from_secs(90));
        let err = load("[server]\nshutdown_grace = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }

    #[test]
    fn kafka_queue_capacity_stays_within_librdkafkas_range() {
        assert_eq!(
            load("[kafka]\nqueue_capacity = 1\n")
                .unwrap()
                .kafka
                .queue_capacity,
            1
        );
        for bad in ["0", "2147483648"] {
            let err = load(&format!("[kafka]\nqueue_capacity = {bad}\n")).unwrap_err();
            assert_eq!(problem_keys(err), ["kafka.queue_capacity"], "{bad}");
        }
    }

    #[test]
    fn secrets_are_redacted_when_printed() {
        let config = load(
            "[kafka.options]\n\"sasl.password\" = \"hunter2\"\n\"compression.type\" = \"zstd\"\n",
        )
        .unwrap();
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("zstd"), "{shown}");
        // The printed config loads back to the same configuration (bar the redaction).
        let again = load(&shown).unwrap();
        assert_eq!(again.server, config.server);
    }
}
