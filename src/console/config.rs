//! The `[console]` section: where the reviewer console listens, who may review, how long a task
//! is leased, and how each route's items are shown and answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::auth::TokenFile;
use crate::settings::{Problem, duration};

/// Who may review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// No credentials: a reviewer types a name. Only on a loopback address (the demo).
    None,
    /// An SSO proxy in front (e.g. oauth2-proxy) sets `identity_header`; requests without it
    /// are refused.
    Header,
    /// Reviewers sign in with a name and a token whose SHA-256 is in `tokens_file`.
    Tokens,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::None => "none",
            AuthMode::Header => "header",
            AuthMode::Tokens => "tokens",
        }
    }
}

/// How an item is shown and answered (a renderer per kind, see `console::templates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateKind {
    /// `classify` when the model's response names labels (or `labels` are configured), `text`
    /// when it holds generated text, `json` otherwise.
    Auto,
    /// Choose one label: answer `{"label": "<label>"}`.
    Classify,
    /// Correct the model's text: answer `{"text": "<text>"}`.
    Text,
    /// Edit the model's JSON answer: the answer is the edited JSON value.
    Json,
    /// The input image with each detection drawn over it (Rekognition labels with boxes or
    /// moderation labels, or `detections`), each confirmed or rejected: answer
    /// `{"detections": [{…, "verdict": "confirmed"|"rejected"}]}`. `moderation` names it too.
    #[serde(alias = "moderation")]
    Boxes,
    /// A Textract AnalyzeDocument answer on its page: the key-value pairs, each editable, the
    /// ones below `highlight_below` marked: answer `{"pairs": [{"key", "value", …}]}`.
    Document,
    /// Entity spans highlighted in the source text, each label editable or removed: answer
    /// `{"entities": [{"start", "end", "text", "label"}]}`.
    Entities,
    /// Source and model output side by side, the output editable: answer `{"text": "<text>"}`
    /// (with the language codes when the request names them).
    Translation,
}

impl TemplateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplateKind::Auto => "auto",
            TemplateKind::Classify => "classify",
            TemplateKind::Text => "text",
            TemplateKind::Json => "json",
            TemplateKind::Boxes => "boxes",
            TemplateKind::Document => "document",
            TemplateKind::Entities => "entities",
            TemplateKind::Translation => "translation",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Where reviewers' browsers (or the SSO proxy) connect.
    pub listen: SocketAddr,
    pub auth: AuthMode,
    /// `auth = "header"`: the header the SSO proxy sets to the signed-in user.
    pub identity_header: String,
    /// `auth = "tokens"`: lines of `name sha256:<hex of the token's SHA-256>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// How long an item shown to a reviewer stays theirs (A2I's TaskTimeLimitInSeconds).
    #[serde(with = "duration")]
    pub task_time_limit: Duration,
    /// How long a sign-in lasts (`auth = "none"` and `"tokens"`).
    #[serde(with = "duration")]
    pub session_ttl: Duration,
    /// Mark cookies `Secure` (and name them `__Host-…`): set it when reviewers reach the
    /// console over HTTPS, e.g. through a TLS-terminating proxy.
    pub cookie_secure: bool,
    /// The defaults for every route; `routes.<name>` overrides them per route.
    pub template: TemplateKind,
    pub instructions: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// The feature names of a tabular input's columns (see `console::tabular`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// Per route, keyed by the review record's `route` (a `[[routes]]` name or a well-known
    /// path template such as `/invocations`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RouteSettings>,
    /// Origins (`https://host[:port]`) whose image and audio URLs in inputs the reviewer's
    /// browser may load; any other URL is shown as text.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub media_origins: Vec<String>,
    /// `boxes`: a JMESPath expression giving the model's detections as a list of
    /// `{label, score, box}` (box `[xmin, ymin, xmax, ymax]` in fractions of the image, or in
    /// pixels), for answers that are not Rekognition's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<String>,
    /// `document`: key-value pairs the model read with less confidence than this are marked.
    pub highlight_below: f64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8090)),
            auth: AuthMode::Header,
            // oauth2-proxy's header (also what most SSO proxies set).
            identity_header: "x-forwarded-user".into(),
            tokens_file: None,
            // A2I's default TaskTimeLimitInSeconds is 3600.
            task_time_limit: Duration::from_secs(3600),
            // A working day.
            session_ttl: Duration::from_secs(12 * 3600),
            cookie_secure: false,
            template: TemplateKind::Auto,
            instructions: String::new(),
            labels: Vec::new(),
            features: Vec::new(),
            routes: BTreeMap::new(),
            media_origins: Vec::new(),
            detections: None,
            highlight_below: DEFAULT_HIGHLIGHT_BELOW,
        }
    }
}

/// One route's settings; a key left out takes the `[console]` default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteSettings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_origins: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detections: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub highlight_below: Option<f64>,
    /// The feature names of a tabular input's columns, in order (a CSV row or an unnamed row).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
}

/// A route's effective settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteView<'a> {
    pub template: TemplateKind,
    pub instructions: &'a str,
    pub labels: &'a [String],
    pub media: MediaView<'a>,
    pub features: &'a [String],
}

/// A route's settings for images, audio and documents.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MediaView<'a> {
    pub origins: &'a [String],
    pub detections: Option<&'a str>,
    pub highlight_below: f64,
}

/// Textract's confident fields are read at 95 % and above; a field under 90 % is worth a look.
pub const DEFAULT_HIGHLIGHT_BELOW: f64 = 0.9;

/// Identities and labels longer than this are refused (they end up in records and pages).
pub const MAX_NAME_CHARS: usize = 128;

impl ConsoleConfig {
    /// The settings for items of `route`.
    pub fn route(&self, route: &str) -> RouteView<'_> {
        let settings = self.routes.get(route);
        RouteView {
            template: settings.and_then(|s| s.template).unwrap_or(self.template),
            instructions: settings
                .and_then(|s| s.instructions.as_deref())
                .unwrap_or(&self.instructions),
            labels: settings
                .and_then(|s| s.labels.as_deref())
                .unwrap_or(&self.labels),
            media: MediaView {
                origins: settings
                    .and_then(|s| s.media_origins.as_deref())
                    .unwrap_or(&self.media_origins),
                detections: settings
                    .and_then(|s| s.detections.as_deref())
                    .or(self.detections.as_deref()),
                highlight_below: settings
                    .and_then(|s| s.highlight_below)
                    .unwrap_or(self.highlight_below),
            },
            features: settings
                .and_then(|s| s.features.as_deref())
                .unwrap_or(&self.features),
        }
    }

    /// Every media origin of any route, for the pages' Content-Security-Policy.
    pub fn all_media_origins(&self) -> Vec<&str> {
        let mut origins: Vec<&str> = self
            .routes
            .values()
            .filter_map(|r| r.media_origins.as_deref())
            .chain([self.media_origins.as_slice()])
            .flatten()
            .map(String::as_str)
            .collect();
        origins.sort_unstable();
        origins.dedup();
        origins
    }

    /// Every problem of the section, each named by its key and value.
    pub fn check(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut bad = |key: String, value: String, message: String| {
            problems.push(Problem {
                key,
                value: Some(value),
                message,
            })
        };
        if self.auth == AuthMode::None && !self.listen.ip().is_loopback() {
            bad(
                "auth".into(),
                quoted("none"),
                format!(
                    "only allowed when console.listen is a loopback address (it is {}); use \
                     \"header\" behind an SSO proxy or \"tokens\"",
                    self.listen
                ),
            );
        }
        if http::HeaderName::from_bytes(self.identity_header.as_bytes()).is_err() {
            bad(
                "identity_header".into(),
                quoted(&self.identity_header),
                "not a valid HTTP header name".into(),
            );
        }
        match (&self.tokens_file, self.auth) {
            (None, AuthMode::Tokens) => bad(
                "tokens_file".into(),
                quoted(""),
                "required when auth = \"tokens\"".into(),
            ),
            (Some(path), AuthMode::Tokens) => {
                if let Err(message) = TokenFile::load(path) {
                    bad(
                        "tokens_file".into(),
                        quoted(&path.display().to_string()),
                        message,
                    );
                }
            }
            (Some(path), _) => bad(
                "tokens_file".into(),
                quoted(&path.display().to_string()),
                "only used with auth = \"tokens\"".into(),
            ),
            (None, _) => {}
        }
        for (key, value) in [
            ("task_time_limit", self.task_time_limit),
            ("session_ttl", self.session_ttl),
        ] {
            if value < Duration::from_secs(1) {
                bad(
                    key.into(),
                    humantime::format_duration(value).to_string(),
                    "must be at least 1s".into(),
                );
            }
        }
        check_labels("", self.template, &self.labels, &mut bad);
        super::media::check(
            "",
            Some(&self.media_origins),
            self.detections.as_deref(),
            Some(self.highlight_below),
            &mut bad,
        );
        check_features("", &self.features, &mut bad);
        for (name, route) in &self.routes {
            let prefix = format!("routes.{}.", table_key(name));
            if name.trim().is_empty() {
                bad(
                    prefix.clone(),
                    quoted(name),
                    "a route name is needed".into(),
                );
            }
            let template = route.template.unwrap_or(self.template);
            if let Some(labels) = &route.labels {
                check_labels(&prefix, template, labels, &mut bad);
            }
            super::media::check(
                &prefix,
                route.media_origins.as_deref(),
                route.detections.as_deref(),
                route.highlight_below,
                &mut bad,
            );
            if let Some(features) = &route.features {
                check_features(&prefix, features, &mut bad);
            }
        }
        problems
    }
}

fn check_labels(
    prefix: &str,
    template: TemplateKind,
    labels: &[String],
    bad: &mut impl FnMut(String, String, String),
) {
    let key = format!("{prefix}labels");
    if !labels.is_empty() && matches!(
            template,
            TemplateKind::Text | TemplateKind::Json | TemplateKind::Translation
        ) {
        bad(
            key.clone(),
            format!("{labels:?}"),
            format!(
                "only used by the classify and entities templates (this one is {})",
                template.as_str()
            ),
        );
    }
    check_names(&key, labels, "labels", bad);
}

fn check_features(prefix: &str, features: &[String], bad: &mut impl FnMut(String, String, String)) {
    check_names(&format!("{prefix}features"), features, "feature names", bad);
}

/// Each of `names` (labels, feature names: `what`) is 1-MAX_NAME_CHARS characters and unique.
fn check_names(
    key: &str,
    names: &[String],
    what: &str,
    bad: &mut impl FnMut(String, String, String),
) {
    let mut seen = std::collections::HashSet::new();
    for name in names {
        if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
            bad(
                key.to_owned(),
                quoted(name),
                format!("{what} are 1-{MAX_NAME_CHARS} characters"),
            );
        } else if !seen.insert(name.as_str()) {
            bad(key.to_owned(), quoted(name), format!("{what} must be unique"));
        }
    }
}

/// A TOML table key as the user would write it (`sentiment`, `"/invocations"`).
fn table_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare { name.to_owned() } else { quoted(name) }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
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
    fn routes_inherit_the_console_defaults() {
        let config = load(
            r#"
            [console]
            instructions = "Pick the team."
            labels = ["billing", "shipping"]
            [console.routes.sentiment]
            labels = ["positive", "negative"]
            [console.routes."/v1/chat/completions"]
            template = "text"
            labels = []
            instructions = "Fix the answer."
            "#,
        )
        .unwrap();
        let console = &config.console;
        let sentiment = console.route("sentiment");
        assert_eq!(sentiment.template, TemplateKind::Auto);
        assert_eq!(sentiment.instructions, "Pick the team.");
        assert_eq!(sentiment.labels, ["positive", "negative"]);
        let chat = console.route("/v1/chat/completions");
        assert_eq!(chat.template, TemplateKind::Text);
        assert_eq!(chat.instructions, "Fix the answer.");
        assert!(chat.labels.is_empty());
        assert_eq!(console.route("unlisted").labels, ["billing", "shipping"]);
    }

    #[test]
    fn text_templates_and_feature_names_per_route() {
        let config = load(
            r#"
            [console]
            features = ["a", "b"]
            [console.routes.ner]
            template = "entities"
            labels = ["PERSON", "PLACE"]
            [console.routes.translate]
            template = "translation"
            [console.routes.churn]
            features = ["tenure", "charges"]
            "#,
        )
        .unwrap();
        let console = &config.console;
        assert_eq!(console.route("ner").template, TemplateKind::Entities);
        assert_eq!(console.route("ner").labels, ["PERSON", "PLACE"]);
        assert_eq!(console.route("translate").template, TemplateKind::Translation);
        assert_eq!(console.route("churn").features, ["tenure", "charges"]);
        assert_eq!(console.route("other").features, ["a", "b"]);
        let problems = load(
            "[console.routes.translate]\ntemplate = \"translation\"\nlabels = [\"x\"]\n",
        )
        .unwrap_err();
        assert_eq!(
            problems,
            ["console.routes.translate.labels = [\"x\"]: only used by the classify and entities \
              templates (this one is translation)"]
        );
    }

    #[test]
    fn every_console_mistake_is_named_by_its_key() {
        let problems = load(
            r#"
            [console]
            listen = "0.0.0.0:8090"
            auth = "none"
            identity_header = "x user"
            task_time_limit = "0s"
            [console.routes.chat]
            template = "text"
            labels = ["a", "a"]
            [console.routes.other]
            colour = "red"
            [console.routes.iris]
            features = ["sepal_length", "sepal_length", ""]
            "#,
        )
        .unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "console.auth = \"none\": only allowed when console.listen is a loopback address",
            "console.identity_header = \"x user\": not a valid HTTP header name",
            "console.task_time_limit = 0s: must be at least 1s",
            "console.routes.chat.labels = [\"a\", \"a\"]: only used by the classify and entities templates",
            "console.routes.chat.labels = \"a\": labels must be unique",
            "console.routes.other.colour",
            "console.routes.iris.features = \"sepal_length\": feature names must be unique",
            "console.routes.iris.features = \"\": feature names are 1-128 characters",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(problems.len(), 8, "{text}");
    }

    #[test]
    fn media_settings_are_checked_and_inherited() {
        let config = load(
            r#"
            [console]
            media_origins = ["https://images.example.com"]
            highlight_below = 0.8
            [console.routes.detect]
            template = "moderation"
            detections = "predictions[*].{label: name, score: p, box: xyxy}"
            [console.routes.forms]
            template = "document"
            media_origins = ["http://127.0.0.1:9000"]
            highlight_below = 0.95
            "#,
        )
        .unwrap();
        let console = &config.console;
        let detect = console.route("detect");
        assert_eq!(detect.template, TemplateKind::Boxes, "moderation names boxes");
        assert_eq!(detect.media.origins, ["https://images.example.com"]);
        assert_eq!(detect.media.highlight_below, 0.8);
        assert!(detect.media.detections.unwrap().starts_with("predictions"));
        let forms = console.route("forms");
        assert_eq!(forms.media.origins, ["http://127.0.0.1:9000"]);
        assert_eq!(forms.media.highlight_below, 0.95);
        assert_eq!(
            console.all_media_origins(),
            ["http://127.0.0.1:9000", "https://images.example.com"]
        );
        let policy = crate::console::server::content_security_policy(console);
        let policy = policy.to_str().unwrap();
        assert!(
            policy.contains(
                "img-src 'self' data: http://127.0.0.1:9000 https://images.example.com;"
            ),
            "{policy}"
        );
        assert!(
            policy.contains("media-src 'self' http://127.0.0.1:9000 https://images.example.com;"),
            "{policy}"
        );

        let problems = load(
            r#"
            [console]
            media_origins = ["https://images.example.com/cats", "ftp://x", "*"]
            [console.routes.detect]
            detections = "predictions[*"
            highlight_below = 90
            "#,
        )
        .unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "console.media_origins = \"https://images.example.com/cats\": an origin is",
            "console.media_origins = \"ftp://x\"",
            "console.media_origins = \"*\"",
            "console.routes.detect.detections = \"predictions[*\": not a JMESPath expression",
            "console.routes.detect.highlight_below = 90: a confidence between 0 and 1",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert_eq!(problems.len(), 5, "{text}");
    }

    #[test]
    fn tokens_need_a_readable_token_file() {
        let problems = load("[console]\nauth = \"tokens\"\n").unwrap_err();
        assert_eq!(
            problems,
            ["console.tokens_file = \"\": required when auth = \"tokens\""]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("reviewers");
        std::fs::write(&file, "alice sha256:abc\n").unwrap();
        let text = format!(
            "[console]\nauth = \"tokens\"\ntokens_file = {:?}\n",
            file.display().to_string()
        );
        let problems = load(&text).unwrap_err();
        assert!(problems[0].contains("line 1"), "{problems:?}");
        let missing = "[console]\nauth = \"tokens\"\ntokens_file = \"/nonexistent/reviewers\"\n";
        assert!(load(missing).unwrap_err()[0].contains("cannot read"));
    }

    #[test]
    fn the_environment_overrides_console_keys() {
        let env = [
            ("REVIEWLOOP__CONSOLE__AUTH", "none"),
            ("REVIEWLOOP__CONSOLE__TASK_TIME_LIMIT", "90s"),
            (
                "REVIEWLOOP__CONSOLE__ROUTES__SENTIMENT__TEMPLATE",
                "classify",
            ),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let config = Config::from_toml_with_env("", "test.toml", env)
            .unwrap()
            .config;
        assert_eq!(config.console.auth, AuthMode::None);
        assert_eq!(config.console.task_time_limit, Duration::from_secs(90));
        assert_eq!(
            config.console.route("sentiment").template,
            TemplateKind::Classify
        );
    }

    #[test]
    fn the_defaults_are_valid_and_print_back() {
        let config = load("").unwrap();
        assert_eq!(config.console, ConsoleConfig::default());
        assert_eq!(config.console.auth, AuthMode::Header);
        let shown = config.to_redacted_toml();
        assert!(shown.contains("[console]"), "{shown}");
        assert_eq!(load(&shown).unwrap().console, config.console);
    }
}
