//! What every component's configuration section is made of: durations written as people write
//! them, and the report of a bad setting. A leaf: components use it, it uses none of them.

use std::fmt;

/// One problem found in a configuration: the key, the value given, and what is wrong.
///
/// A component's constructor reports keys relative to its own section (`expression`,
/// `confidence_below`); the configuration prefixes them with where the section sits
/// (`routes[1].confidence.expression`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub value: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn new(
        key: impl Into<String>,
        value: impl Into<String>,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            key: key.into(),
            value: Some(value.into()),
            message: message.into(),
        }
    }

    /// A problem with no single value to show (a missing table, an unknown section).
    pub fn about(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            value: None,
            message: message.into(),
        }
    }

    /// The same problem under `prefix` (`"routes[1].review."`).
    pub fn under(mut self, prefix: &str) -> Problem {
        self.key = format!("{prefix}{}", self.key);
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {}: {}", self.key, value, self.message),
            None => write!(f, "{}: {}", self.key, self.message),
        }
    }
}

/// Adds a problem at `key` unless `ok`: the shape of most range checks.
pub fn require(
    problems: &mut Vec<Problem>,
    ok: bool,
    key: &str,
    value: impl Into<String>,
    message: &str,
) {
    if !ok {
        problems.push(Problem::new(key, value, message));
    }
}

/// A string value as it is shown in a problem: quoted, escaped.
pub fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A duration as it is shown in a problem and written in a file: `"30s"`.
pub fn shown(duration: std::time::Duration) -> String {
    humantime::format_duration(duration).to_string()
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
