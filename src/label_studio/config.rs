//! The `[label_studio]` section: which Label Studio, which project and labeling config, where
//! its webhook reaches the bridge, and how often the bridge catches up on annotations.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{Problem, duration, quoted, require, shown};

/// The Label Studio project the bridge feeds: an existing project's id, or a title (the
/// project with that title, created with the labeling config when there is none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProjectRef {
    Id(u64),
    Title(String),
}

impl Default for ProjectRef {
    fn default() -> Self {
        ProjectRef::Title("reviewloop".into())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelStudioConfig {
    /// Label Studio's base URL (`http://…` or `https://…`); empty: no bridge (`run` leaves it
    /// out, `reviewloop label-studio` refuses to start).
    pub url: String,
    /// A file holding the API token (legacy token, header `Authorization: Token …`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The environment variable holding the token when `token_file` is not set.
    pub token_env: String,
    pub project: ProjectRef,
    /// The labeling config of a project the bridge creates; empty: derived from the
    /// `[console]` settings of `route` (template, labels, instructions).
    pub label_config: String,
    /// Only review records of this route become tasks (and its console settings give the
    /// derived labeling config); empty: every route, with the `[console]` defaults.
    pub route: String,
    /// Where the bridge receives Label Studio's webhook.
    pub listen: SocketAddr,
    /// The URL Label Studio calls; empty: `http://<listen>/webhook`.
    pub webhook_url: String,
    /// The header carrying the shared secret on every webhook call.
    pub secret_header: String,
    /// A file holding the shared secret; not set: a random secret per start (the bridge
    /// registers the webhook itself, so Label Studio always has the current one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// How often the bridge reads annotations it may have missed (webhooks are sent once).
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// The consumer group reading the review topic.
    pub group_id: String,
    /// How long one Label Studio API call may take.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
}

impl Default for LabelStudioConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            token_file: None,
            // The name the test script and Label Studio's own docs use.
            token_env: "LABEL_STUDIO_TOKEN".into(),
            project: ProjectRef::default(),
            label_config: String::new(),
            route: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8091)),
            webhook_url: String::new(),
            secret_header: "x-reviewloop-secret".into(),
            secret_file: None,
            // Label Studio sends a webhook once with a 1 s timeout: a missed answer shows up
            // within this.
            poll_interval: Duration::from_secs(30),
            group_id: "reviewloop-label-studio".into(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Label Studio refuses longer project titles.
const MAX_TITLE_CHARS: usize = 50;

/// A credential read from a file or the environment: shown nowhere (`Debug` redacts it).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl LabelStudioConfig {
    /// Whether a bridge is configured (`url` set).
    pub fn is_configured(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// The API token, from `token_file` or `token_env`.
    pub fn token(&self) -> Result<Secret, String> {
        self.token_from(|name| std::env::var(name).ok())
    }

    fn token_from(&self, env: impl Fn(&str) -> Option<String>) -> Result<Secret, String> {
        let token = match &self.token_file {
            Some(path) => read_secret(path)?,
            None => env(&self.token_env)
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    format!(
                        "no API token: set token_file or the environment variable {}",
                        self.token_env
                    )
                })?,
        };
        if token.chars().any(|c| c.is_control() || c == ' ') {
            return Err("the API token holds spaces or control characters".into());
        }
        Ok(Secret(token))
    }

    /// The shared secret from `secret_file`, or `None` for a random one per start.
    pub fn secret(&self) -> Result<Option<Secret>, String> {
        self.secret_file
            .as_deref()
            .map(|path| read_secret(path).map(Secret))
            .transpose()
    }

    /// Every problem of the section, keys relative to `[label_studio]`. The token is checked
    /// only when a bridge is configured.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.is_configured() {
            let url = self.url.trim();
            let parsed = url.parse::<http::Uri>();
            let ok = parsed.as_ref().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            });
            require(
                &mut problems,
                ok,
                "url",
                quoted(&self.url),
                "must be an http:// or https:// URL",
            );
            if let Err(message) = self.token() {
                let (key, value) = match &self.token_file {
                    Some(path) => ("token_file", quoted(&path.display().to_string())),
                    None => ("token_env", quoted(&self.token_env)),
                };
                problems.push(Problem::new(key, value, message));
            }
        }
        if let ProjectRef::Title(title) = &self.project {
            require(
                &mut problems,
                !title.trim().is_empty(),
                "project",
                quoted(title),
                "a project id or a non-empty title is needed",
            );
            require(
                &mut problems,
                title.chars().count() <= MAX_TITLE_CHARS,
                "project",
                quoted(title),
                "Label Studio's project titles are at most 50 characters",
            );
        }
        if !self.label_config.trim().is_empty() {
            require(
                &mut problems,
                self.label_config.trim_start().starts_with("<View"),
                "label_config",
                quoted(&self.label_config.chars().take(40).collect::<String>()),
                "a Label Studio labeling config starts with <View>",
            );
        }
        if !self.webhook_url.is_empty() {
            let ok = self.webhook_url.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some()
            });
            require(
                &mut problems,
                ok,
                "webhook_url",
                quoted(&self.webhook_url),
                "must be an http:// or https:// URL",
            );
        }
        require(
            &mut problems,
            !(self.listen.ip().is_unspecified() && self.webhook_url.is_empty()),
            "webhook_url",
            quoted(""),
            "required when label_studio.listen is a wildcard address (Label Studio must be told \
             where the bridge is)",
        );
        require(
            &mut problems,
            http::HeaderName::from_bytes(self.secret_header.as_bytes()).is_ok(),
            "secret_header",
            quoted(&self.secret_header),
            "not a valid HTTP header name",
        );
        if let Some(path) = &self.secret_file
            && let Err(message) = read_secret(path)
        {
            problems.push(Problem::new(
                "secret_file",
                quoted(&path.display().to_string()),
                message,
            ));
        }
        require(
            &mut problems,
            self.poll_interval >= Duration::from_secs(1),
            "poll_interval",
            shown(self.poll_interval),
            "must be at least 1s",
        );
        require(
            &mut problems,
            self.request_timeout >= Duration::from_millis(100),
            "request_timeout",
            shown(self.request_timeout),
            "must be at least 100ms",
        );
        require(
            &mut problems,
            !self.group_id.trim().is_empty(),
            "group_id",
            quoted(&self.group_id),
            "must not be empty",
        );
        problems
    }
}

/// A secret file's first line, trimmed; never its content in an error.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let secret = text.lines().next().unwrap_or_default().trim().to_owned();
    if secret.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(text: &str) -> Result<Config, Vec<String>> {
        Config::from_toml_with_env(text, "test.toml", Vec::new())
            .map(|checked| checked.config)
            .map_err(|e| e.problems().into_iter().map(|p| p.to_string()).collect())
    }

    #[test]
    fn the_default_is_no_bridge_and_valid() {
        let config = load("").unwrap();
        assert!(!config.label_studio.is_configured());
        assert_eq!(config.label_studio, LabelStudioConfig::default());
        let shown = config.to_redacted_toml();
        assert!(shown.contains("[label_studio]"), "{shown}");
        assert_eq!(load(&shown).unwrap().label_studio, config.label_studio);
    }

    #[test]
    fn projects_are_ids_or_titles_and_tokens_come_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "abc123\n").unwrap();
        let text = format!(
            "[label_studio]\nurl = \"http://ls:8080\"\ntoken_file = {:?}\nproject = 7\n",
            token.display().to_string()
        );
        let config = load(&text).unwrap().label_studio;
        assert_eq!(config.project, ProjectRef::Id(7));
        let secret = config.token().unwrap();
        assert_eq!(secret.expose(), "abc123");
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        let long = format!("[label_studio]\nproject = \"{}\"\n", "x".repeat(51));
        assert!(load(&long).unwrap_err()[0].contains("at most 50 characters"));
        let titled = "[label_studio]\nproject = \"Support tickets\"\n";
        assert_eq!(
            load(titled).unwrap().label_studio.project,
            ProjectRef::Title("Support tickets".into())
        );
    }

    #[test]
    fn a_token_from_the_environment() {
        let config = LabelStudioConfig {
            token_env: "MY_TOKEN".into(),
            ..LabelStudioConfig::default()
        };
        let found = config.token_from(|name| (name == "MY_TOKEN").then(|| " t0k ".into()));
        assert_eq!(found.unwrap().expose(), "t0k");
        let missing = config.token_from(|_| None).unwrap_err();
        assert!(missing.contains("MY_TOKEN"), "{missing}");
    }

    #[test]
    fn every_label_studio_mistake_is_named_by_its_key() {
        let problems = load(
            r#"
            [label_studio]
            url = "ftp://ls"
            token_file = "/nonexistent/token"
            project = ""
            label_config = "<Choices/>"
            webhook_url = "nope"
            secret_header = "x secret"
            poll_interval = "0s"
            group_id = ""
            "#,
        )
        .unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "label_studio.url = \"ftp://ls\": must be an http:// or https:// URL",
            "label_studio.token_file = \"/nonexistent/token\": cannot read it",
            "label_studio.project = \"\": a project id or a non-empty title is needed",
            "label_studio.label_config = \"<Choices/>\": a Label Studio labeling config starts",
            "label_studio.webhook_url = \"nope\": must be an http:// or https:// URL",
            "label_studio.secret_header = \"x secret\": not a valid HTTP header name",
            "label_studio.poll_interval = 0s: must be at least 1s",
            "label_studio.group_id = \"\": must not be empty",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(problems.len(), 8, "{text}");
    }
}
