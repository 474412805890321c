//! Routes: which configured route a request path belongs to, and the bounded `route` label.
//!
//! Configured `[[routes]]` are tried in order; a `path` with `{param}` segments is a template,
//! otherwise a prefix that matches at a segment boundary. A path no route claims is labelled by
//! the well-known inference template it matches (`/invocations`, `/v2/models/{model}/infer`, …)
//! or `other`, so a client can never grow the metrics' label set.

use std::collections::HashSet;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::confidence::ConfidenceConfig;
use crate::decision::{Policy, ReviewConfig};
use crate::redact::{RedactConfig, Redactor};
use crate::settings::{Problem, quoted};

/// A named route: requests whose path matches get their own label and decision settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    /// A path prefix (`/sentiment`) or a template (`/v2/models/{model}/infer`).
    pub path: String,
    pub confidence: ConfidenceConfig,
    pub review: ReviewConfig,
    pub redact: RedactConfig,
}

/// The route a request was matched to: its bounded label, its own review policy and its
/// redaction rules. Cheap to clone (one reference count).
#[derive(Debug, Clone)]
pub struct Route(Arc<RouteInner>);

#[derive(Debug)]
struct RouteInner {
    /// Its place in [`RouteTable::routes`], for tables kept per route (metric handles).
    index: usize,
    label: Arc<str>,
    policy: Arc<Policy>,
    redactor: Arc<Redactor>,
}

impl Route {
    fn new(index: usize, label: &str, policy: Arc<Policy>, redactor: Arc<Redactor>) -> Route {
        Route(Arc::new(RouteInner {
            index,
            label: Arc::from(label),
            policy,
            redactor,
        }))
    }

    /// This route's position in its table's [`RouteTable::routes`].
    pub fn index(&self) -> usize {
        self.0.index
    }

    /// The metrics label and the review record's `route`.
    pub fn label(&self) -> &str {
        &self.0.label
    }

    /// The decision settings of this route (the top-level ones for unconfigured paths).
    pub fn policy(&self) -> &Policy {
        &self.0.policy
    }

    /// What this route removes from its review records (the top-level `[redact]` for
    /// unconfigured paths).
    pub fn redactor(&self) -> &Redactor {
        &self.0.redactor
    }
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
    /// Compiles every route's policy and redaction rules; the top-level
    /// `[confidence]`/`[review]`/`[redact]` settings are those of every path no configured
    /// route claims. Every problem is reported, with its full key (`review.…` for the top
    /// level, `routes[1].…` for a route).
    pub fn new(
        confidence: &ConfidenceConfig,
        review: &ReviewConfig,
        redact: &RedactConfig,
        routes: &[RouteConfig],
    ) -> Result<RouteTable, Vec<Problem>> {
        let mut problems = Vec::new();
        let default = Policy::new(confidence, review)
            .map_err(|found| problems.extend(found))
            .ok()
            .map(Arc::new);
        let default_redactor = Redactor::new(redact)
            .map_err(|found| problems.extend(found))
            .ok()
            .map(Arc::new);
        let mut names = HashSet::new();
        let mut configured = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            let prefix = format!("routes[{i}].");
            if route.name.trim().is_empty() {
                problems.push(Problem::new(
                    format!("{prefix}name"),
                    quoted(&route.name),
                    "every route needs a name (it is the metrics label)",
                ));
            } else if !names.insert(route.name.as_str()) {
                problems.push(Problem::new(
                    format!("{prefix}name"),
                    quoted(&route.name),
                    "route names must be unique",
                ));
            }
            let pattern = Pattern::parse(&route.path).map_err(|message| {
                problems.push(Problem::new(
                    format!("{prefix}path"),
                    quoted(&route.path),
                    message,
                ))
            });
            let policy = Policy::new(&route.confidence, &route.review)
                .map_err(|found| problems.extend(found.into_iter().map(|p| p.under(&prefix))));
            let redactor = Redactor::new(&route.redact)
                .map_err(|found| problems.extend(found.into_iter().map(|p| p.under(&prefix))));
            if let (Ok(pattern), Ok(policy), Ok(redactor)) = (pattern, policy, redactor) {
                let index = configured.len();
                let route = Route::new(index, &route.name, Arc::new(policy), Arc::new(redactor));
                configured.push((pattern, route));
            }
        }
        let (Some(default), Some(default_redactor)) = (default, default_redactor) else {
            return Err(problems);
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let first = configured.len();
        let well_known = WELL_KNOWN
            .iter()
            .enumerate()
            .map(|(i, template)| {
                let route = Route::new(
                    first + i,
                    template,
                    default.clone(),
                    default_redactor.clone(),
                );
                (Pattern::Template(parse_template(template)), route)
            })
            .collect();
        let other = Route::new(
            first + WELL_KNOWN.len(),
            OTHER,
            default,
            default_redactor,
        );
        Ok(RouteTable {
            configured,
            well_known,
            other,
        })
    }

    /// Every route, in [`Route::index`] order.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.configured
            .iter()
            .chain(&self.well_known)
            .map(|(_, route)| route)
            .chain([&self.other])
    }

    /// Every route's redactor (the default one once), e.g. to initialise their metrics.
    pub fn redactors(&self) -> impl Iterator<Item = &Redactor> {
        self.configured
            .iter()
            .map(|(_, route)| route.redactor())
            .chain([self.other.redactor()])
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
    /// A configured route's path: a template with `{params}`, else a prefix.
    fn parse(path: &str) -> Result<Pattern, String> {
        if !path.starts_with('/') {
            return Err("must start with '/'".into());
        }
        check_template(path)?;
        Ok(if path.contains('{') {
            Pattern::Template(parse_template(path))
        } else {
            Pattern::Prefix(path.trim_end_matches('/').to_owned())
        })
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

/// Checks a route path: balanced, named, non-adjacent `{params}`.
fn check_template(path: &str) -> Result<(), String> {
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
        RouteTable::new(
            &ConfidenceConfig::default(),
            &ReviewConfig::default(),
            &RedactConfig::default(),
            &routes,
        )
        .unwrap()
    }

    fn label<'a>(t: &'a RouteTable, path: &str) -> &'a str {
        t.resolve(path).label()
    }

    #[test]
    fn every_route_sits_at_its_index_so_per_route_tables_line_up() {
        let t = table(&[("sentiment", "/v2/models/{model}/infer"), ("api", "/api")]);
        let routes: Vec<&Route> = t.routes().collect();
        assert_eq!(routes.len(), 2 + WELL_KNOWN.len() + 1);
        for (i, route) in routes.iter().enumerate() {
            assert_eq!(route.index(), i, "{}", route.label());
        }
        for path in ["/api/x", "/invocations", "/nowhere/at/all", "/v2/models/m/infer"] {
            let resolved = t.resolve(path);
            assert_eq!(routes[resolved.index()].label(), resolved.label(), "{path}");
        }
    }

    #[test]
    fn configured_routes_win_in_order() {
        let t = table(&[("sentiment", "/v2/models/{model}/infer"), ("api", "/api")]);
        assert_eq!(label(&t, "/v2/models/bert/infer"), "sentiment");
        assert_eq!(label(&t, "/api/x/y"), "api");
        assert_eq!(label(&t, "/api"), "api");
        assert_eq!(label(&t, "/apix"), "other");
    }

    #[test]
    fn each_route_resolves_to_its_own_policy() {
        let mut special = RouteConfig {
            name: "special".into(),
            path: "/special".into(),
            ..RouteConfig::default()
        };
        special.review.force_header = "x-special-review".into();
        let t = RouteTable::new(
            &ConfidenceConfig::default(),
            &ReviewConfig::default(),
            &RedactConfig::default(),
            &[special],
        )
        .unwrap();
        assert_eq!(
            t.resolve("/special/a").policy().force_header(),
            "x-special-review"
        );
        assert_eq!(
            t.resolve("/invocations").policy().force_header(),
            "x-review"
        );
        assert_eq!(t.resolve("/elsewhere").policy().force_header(), "x-review");
    }

    #[test]
    fn each_route_resolves_to_its_own_redactor() {
        let top = RedactConfig {
            patterns: vec!["email".into()],
            ..RedactConfig::default()
        };
        let open = RouteConfig {
            name: "open".into(),
            path: "/open".into(),
            ..RouteConfig::default()
        };
        let t = RouteTable::new(
            &ConfidenceConfig::default(),
            &ReviewConfig::default(),
            &top,
            &[open],
        )
        .unwrap();
        assert!(t.resolve("/invocations").redactor().is_active());
        assert!(t.resolve("/elsewhere").redactor().is_active());
        assert!(!t.resolve("/open/x").redactor().is_active());
        assert_eq!(t.redactors().count(), 2);
    }

    #[test]
    fn bad_routes_are_all_reported_with_their_index() {
        let routes = [
            RouteConfig {
                name: "a".into(),
                path: "/a".into(),
                ..RouteConfig::default()
            },
            RouteConfig {
                name: "a".into(),
                path: "/b/{".into(),
                ..RouteConfig::default()
            },
        ];
        let problems = RouteTable::new(
            &ConfidenceConfig::default(),
            &ReviewConfig::default(),
            &RedactConfig::default(),
            &routes,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["routes[1].name", "routes[1].path"]);
    }

    #[test]
    fn unclaimed_paths_get_a_bounded_template_label() {
        let t = table(&[]);
        assert_eq!(label(&t, "/invocations"), "/invocations");
        assert_eq!(
            label(&t, "/v1/models/resnet:predict"),
            "/v1/models/{model}:predict"
        );
        assert_eq!(
            label(&t, "/v2/models/m/versions/3/infer"),
            "/v2/models/{model}/versions/{version}/infer"
        );
        assert_eq!(label(&t, "/random/1234"), "other");
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
