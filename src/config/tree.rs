//! The raw TOML tree before it becomes a [`Config`](super::Config): the environment overlay,
//! each leaf tried alone so that every bad key and value is named, unknown tables reported
//! once with the closest known name, and routes inheriting the top-level settings.

use crate::settings::{Problem, quoted};

/// Environment variables with this prefix override config keys: `REVIEWLOOP__KAFKA__BROKERS`.
pub const ENV_PREFIX: &str = "REVIEWLOOP__";

/// Applies `REVIEWLOOP__SECTION__KEY=value` overrides. Under `kafka.options`, `_` in the key
/// becomes `.` (`REVIEWLOOP__KAFKA__OPTIONS__COMPRESSION_TYPE` ⇒ `compression.type`), since dots
/// are awkward in variable names and librdkafka property names use none.
pub(super) fn apply_env(
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
            problems.push(Problem::about(
                name.clone(),
                "environment overrides are named REVIEWLOOP__SECTION__KEY",
            ));
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
            problems.push(Problem::new(name, quoted(&value), message));
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

#[derive(Clone, PartialEq)]
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
/// A leaf inside an unknown table names the table instead, once, and the whole table goes.
pub(super) fn check_leaves<T: serde::de::DeserializeOwned>(
    raw: &mut toml::Table,
    base: &toml::Value,
) -> Vec<Problem> {
    let mut leaves = Vec::new();
    collect_leaves(raw, "", &[], &mut leaves);
    let mut problems = Vec::new();
    let mut bad_paths: Vec<Vec<PathStep>> = Vec::new();
    for leaf in leaves {
        if bad_paths.iter().any(|bad| leaf.path.starts_with(bad)) {
            continue; // inside a table already reported as unknown
        }
        let mut trial = base.clone();
        place(&mut trial, &leaf.path, leaf.value.clone());
        let Err(e) = trial.try_into::<T>() else {
            continue;
        };
        let message = e.message().trim().to_owned();
        let unknown = unknown_field(&message);
        // An unknown name that is a table on the leaf's path, not the leaf itself.
        let table_depth = unknown.as_ref().and_then(|(name, _)| {
            leaf.path[..leaf.path.len() - 1]
                .iter()
                .position(|step| matches!(step, PathStep::Key(k) if k == name))
        });
        match (unknown, table_depth) {
            (Some((name, expected)), Some(depth)) => {
                let table: Vec<PathStep> = leaf.path[..=depth].to_vec();
                let key = dotted(&table);
                problems.push(Problem::about(
                    key,
                    format!("unknown table{}", suggestion(&name, &expected)),
                ));
                bad_paths.push(table);
            }
            (Some((name, expected)), None) => {
                problems.push(Problem::new(
                    leaf.key,
                    leaf.value.to_string(),
                    format!("{message}{}", suggestion(&name, &expected)),
                ));
                bad_paths.push(leaf.path);
            }
            (None, _) => {
                problems.push(Problem::new(leaf.key, leaf.value.to_string(), message));
                bad_paths.push(leaf.path);
            }
        }
    }
    for path in bad_paths {
        remove_leaf(raw, &path);
    }
    problems
}

/// serde's "unknown field `x`, expected one of `a`, `b`": the name and the known names.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((name.to_owned(), expected))
}

/// "; did you mean `listen`?" when a known name is a typo away from `name`.
fn suggestion(name: &str, known: &[String]) -> String {
    let best = known
        .iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(distance, k)| *distance <= (k.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance);
    match best {
        Some((_, known)) => format!("; did you mean `{known}`?"),
        None => String::new(),
    }
}

/// Levenshtein distance, on characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

fn dotted(path: &[PathStep]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            PathStep::Key(key) if out.is_empty() => out.push_str(key),
            PathStep::Key(key) => {
                out.push('.');
                out.push_str(key);
            }
            PathStep::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
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

/// Routes inherit every `confidence`/`review`/`redact` key they do not set from the top-level
/// tables.
pub(super) fn inherit_route_defaults(raw: &mut toml::Table) {
    let top: Vec<(&str, toml::Table)> = ["confidence", "review", "redact"]
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
