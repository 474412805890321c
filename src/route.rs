//! Routes: which configured route a request path belongs to, and the bounded `route` label.
//!
//! Configured `[[routes]]` are tried in order; a `path` with `{param}` segments is a template,
//! otherwise a prefix that matches at a segment boundary. A path no route claims is labelled by
//! the well-known inference template it matches (`/invocations`, `/v2/models/{model}/infer`, …)
//! or `other`, so a client can never grow the metrics' label set.

use std::sync::Arc;

use crate::config::RouteConfig;

/// The default route's index: top-level `confidence`/`review` settings apply.
pub const DEFAULT_ROUTE: usize = usize::MAX;

/// The route a request was matched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Index into `Config::routes`, or [`DEFAULT_ROUTE`].
    pub index: usize,
    /// The metrics label and the review record's `route`.
    pub label: Arc<str>,
}

/// Paths model servers commonly expose, used as labels for requests no configured route claims.
const WELL_KNOWN: &[&str] = &[
    "/invocations",
    "/ping",
    "/endpoints/{endpoint}/invocations",
    "/v1/models/{model}:predict",
    "/v1/models/{model}:classify",
    "/v1/models/{model}:regress",
    "/v1/models/{model}",
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
    "/v2/models/{model}/ready",
    "/v2/models/{model}",
    "/v2/health/ready",
    "/v2/health/live",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/predict",
    "/predictions/{model}",
    "/",
];

const OTHER: &str = "other";

#[derive(Debug)]
enum Pattern {
    Prefix(String),
    Template(Vec<Part>),
}

#[derive(Debug, PartialEq)]
enum Part {
    Literal(String),
    Param,
}

#[derive(Debug)]
pub struct RouteTable {
    configured: Vec<(Pattern, Route)>,
    well_known: Vec<(Pattern, Route)>,
    other: Route,
}

impl RouteTable {
    /// Builds the table; route paths were checked by config validation.
    pub fn new(routes: &[RouteConfig]) -> RouteTable {
        let configured = routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let route_ref = Route {
                    index,
                    label: Arc::from(route.name.as_str()),
                };
                (Pattern::parse(&route.path), route_ref)
            })
            .collect();
        let well_known = WELL_KNOWN
            .iter()
            .map(|template| {
                let route = Route {
                    index: DEFAULT_ROUTE,
                    label: Arc::from(*template),
                };
                (Pattern::Template(parse_template(template)), route)
            })
            .collect();
        RouteTable {
            configured,
            well_known,
            other: Route {
                index: DEFAULT_ROUTE,
                label: Arc::from(OTHER),
            },
        }
    }

    pub fn resolve(&self, path: &str) -> &Route {
        self.configured
            .iter()
            .chain(&self.well_known)
            .find(|(pattern, _)| pattern.matches(path))
            .map_or(&self.other, |(_, route)| route)
    }
}

impl Pattern {
    fn parse(path: &str) -> Pattern {
        if path.contains('{') {
            Pattern::Template(parse_template(path))
        } else {
            Pattern::Prefix(path.trim_end_matches('/').to_owned())
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Pattern::Prefix(prefix) => {
                prefix.is_empty()
                    || path
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            Pattern::Template(parts) => match_parts(parts, path),
        }
    }
}

/// Checks a route path as config validation needs: balanced, named, non-adjacent `{params}`.
pub fn check_template(path: &str) -> Result<(), String> {
    let mut rest = path;
    let mut last_was_param = false;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("has a '}' without its '{'".into());
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "has a '{' without its '}'".to_owned())?;
        let name = &after[..close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "parameter {{{name}}} must be a name of [a-zA-Z0-9_]"
            ));
        }
        if open == 0 && last_was_param {
            return Err("two parameters must be separated by literal text".into());
        }
        rest = &after[close + 1..];
        last_was_param = true;
    }
    Ok(())
}

fn parse_template(template: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            parts.push(Part::Literal(rest[..open].to_owned()));
        }
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        parts.push(Part::Param);
        rest = &rest[close.min(rest.len())..];
    }
    if !rest.is_empty() {
        parts.push(Part::Literal(rest.to_owned()));
    }
    parts
}

/// A parameter matches one or more characters within a single path segment.
fn match_parts(parts: &[Part], path: &str) -> bool {
    match parts.split_first() {
        None => path.is_empty(),
        Some((Part::Literal(literal), rest)) => path
            .strip_prefix(literal.as_str())
            .is_some_and(|tail| match_parts(rest, tail)),
        Some((Part::Param, rest)) => {
            let segment_end = path.find('/').unwrap_or(path.len());
            // Try the longest value first; backtrack for templates like `{model}:predict`.
            (1..=segment_end)
                .rev()
                .any(|end| match_parts(rest, &path[end..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &[(&str, &str)]) -> RouteTable {
        let routes: Vec<RouteConfig> = routes
            .iter()
            .map(|(name, path)| RouteConfig {
                name: name.to_string(),
                path: path.to_string(),
                ..RouteConfig::default()
            })
            .collect();
        RouteTable::new(&routes)
    }

    #[test]
    fn configured_routes_win_in_order() {
        let t = table(&[("sentiment", "/v2/models/{model}/infer"), ("api", "/api")]);
        let r = t.resolve("/v2/models/bert/infer");
        assert_eq!((&*r.label, r.index), ("sentiment", 0));
        assert_eq!(&*t.resolve("/api/x/y").label, "api");
        assert_eq!(&*t.resolve("/api").label, "api");
        assert_eq!(&*t.resolve("/apix").label, "other");
    }

    #[test]
    fn unclaimed_paths_get_a_bounded_template_label() {
        let t = table(&[]);
        assert_eq!(&*t.resolve("/invocations").label, "/invocations");
        assert_eq!(
            &*t.resolve("/v1/models/resnet:predict").label,
            "/v1/models/{model}:predict"
        );
        assert_eq!(
            &*t.resolve("/v2/models/m/versions/3/infer").label,
            "/v2/models/{model}/versions/{version}/infer"
        );
        assert_eq!(&*t.resolve("/random/1234").label, "other");
        assert_eq!(t.resolve("/random/1234").index, DEFAULT_ROUTE);
    }

    #[test]
    fn templates_are_checked() {
        assert!(check_template("/v2/models/{model}/infer").is_ok());
        assert!(check_template("/a/{b").is_err());
        assert!(check_template("/a/}").is_err());
        assert!(check_template("/a/{}").is_err());
        assert!(check_template("/a/{x}{y}").is_err());
    }
}
