//! Configuration: the TOML file, the `REVIEWLOOP__SECTION__KEY` environment overlay, defaults,
//! and one report of every bad key and value.
//!
//! This module owns the syntax: which section lives where, the overlay, and the leaf-by-leaf
//! check (in [`tree`]) that names each unknown key or badly typed value. Each section's type
//! and meaning belong to the component that uses it ([`ServerConfig`] to the proxy,
//! [`KafkaConfig`] to the Kafka plumbing, …); values are checked by each component's own
//! checks and constructors, whose problems are gathered into the same report. What the
//! constructors compile (each route's review policy) is kept in [`Checked`], so the running
//! components use what was checked and nothing is compiled twice.
//!
//! Per-route `confidence`/`review`/`redact` tables inherit every key they do not set from the
//! top-level tables.

mod tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::confidence::ConfidenceConfig;
pub use crate::console::{AuthMode, ConsoleConfig, TemplateKind};
pub use crate::decision::ReviewConfig;
pub use crate::join::JoinConfig;
pub use crate::kafka::KafkaConfig;
use crate::kafka::is_secret_option;
pub use crate::label_studio::{LabelStudioConfig, ProjectRef};
pub use crate::proxy::ServerConfig;
pub use crate::redact::{FieldAction, FieldRule, PatternAction, RedactConfig};
pub use crate::route::RouteConfig;
use crate::route::RouteTable;
pub use crate::upstream::{UpstreamConfig, UpstreamKind};

pub use self::tree::ENV_PREFIX;
// The sections' types, for building a configuration in code (tests, embedding): each is owned
// by its component and only re-exported here.
pub use crate::confidence::{Aggregate, Preset, Scale};
pub use crate::decision::{SampleBy, SampleStrata};
pub use crate::join::Agreement;
pub use crate::kafka::{Delivery, EMBEDDED_BROKERS};
pub use crate::settings::Problem;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub confidence: ConfidenceConfig,
    pub review: ReviewConfig,
    /// What review records must not carry (per-route overridable, like `review`).
    pub redact: RedactConfig,
    pub kafka: KafkaConfig,
    pub join: JoinConfig,
    /// The reviewer console (`reviewloop console`, and part of `run`).
    pub console: ConsoleConfig,
    /// The Label Studio bridge (`reviewloop label-studio`, and part of `run` when its `url`
    /// is set).
    pub label_studio: LabelStudioConfig,
    /// Optional named routes; the top-level `confidence`/`review` tables are the default route.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
}

/// A configuration that passed every check, with what the checks compiled.
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Config,
    /// Every route with its compiled review policy (conditions files read, JMESPath compiled).
    pub routes: Arc<RouteTable>,
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
            other => vec![Problem::about("", other.to_string())],
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
    /// Loads `path` (or the defaults when `None`) with the process environment's overrides,
    /// and checks it.
    pub fn load(path: Option<&Path>) -> Result<Checked, ConfigError> {
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

    /// Parses `text`, applies `REVIEWLOOP__…` variables from `env`, and checks the result.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Checked, ConfigError> {
        let mut raw: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: origin.to_owned(),
            message: e.message().to_owned(),
        })?;
        let base = toml::Value::try_from(Config::default()).expect("defaults serialize");
        let mut problems = tree::apply_env(&mut raw, &base, env);
        problems.extend(tree::check_leaves::<Config>(&mut raw, &base));
        tree::inherit_route_defaults(&mut raw);
        // Every bad leaf is gone, so this succeeds; should it not, its error joins the rest.
        let config: Config = match toml::Value::Table(raw).try_into() {
            Ok(config) => config,
            Err(e) => {
                problems.push(Problem::about("", e.message().trim()));
                return Err(ConfigError::Invalid(problems));
            }
        };
        match config.check() {
            Ok(checked) if problems.is_empty() => Ok(checked),
            Ok(_) => Err(ConfigError::Invalid(problems)),
            Err(ConfigError::Invalid(more)) => {
                problems.extend(more);
                Err(ConfigError::Invalid(problems))
            }
            Err(other) => Err(other),
        }
    }

    /// Checks every value with the components' own checks and constructors; every problem is
    /// reported, each under its full key.
    pub fn check(self) -> Result<Checked, ConfigError> {
        let mut problems = Vec::new();
        let mut section = |prefix: &str, found: Vec<Problem>| {
            problems.extend(found.into_iter().map(|p| p.under(prefix)));
        };
        section("server.", self.server.check());
        section("upstream.", self.upstream.check());
        section("kafka.", self.kafka.check());
        section("join.", self.join.check());
        section("console.", self.console.check());
        section("label_studio.", self.label_studio.check());
        let routes = RouteTable::new(&self.confidence, &self.review, &self.redact, &self.routes)
            .map_err(|found| problems.extend(found));
        match routes {
            Ok(routes) if problems.is_empty() => Ok(Checked {
                config: self,
                routes: Arc::new(routes),
            }),
            _ => Err(ConfigError::Invalid(problems)),
        }
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

#[cfg(test)]
mod tests;
