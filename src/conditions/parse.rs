//! Reading a conditions file: A2I's JSON schema, plus the value ranges A2I documents, checked
//! whole so that every problem is named by its JSON path.

use serde_json::{Map, Value};

use super::{Bounds, Check, Conditions, Node, Problem};

/// Parses a HumanLoopActivationConditions document. Also accepted: the `CreateFlowDefinition`
/// fragment `{"HumanLoopActivationConditions": "<the JSON as a string>"}` as A2I takes it.
pub fn parse(text: &[u8]) -> Result<Conditions, Vec<Problem>> {
    let root: Value = serde_json::from_slice(text).map_err(|e| {
        vec![Problem {
            path: "$".into(),
            message: format!("not valid JSON: {e}"),
        }]
    })?;
    let mut parser = Parser::default();
    let roots = parser.document(&root, "$");
    if parser.problems.is_empty() {
        Ok(Conditions { roots })
    } else {
        Err(parser.problems)
    }
}

const TYPES: &str = "Sampling, ConfidenceCheck, ModerationLabelConfidenceCheck, \
                     ImportantFormKeyConfidenceCheck, MissingImportantFormKey";

#[derive(Default)]
struct Parser {
    problems: Vec<Problem>,
}

impl Parser {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn document(&mut self, root: &Value, path: &str) -> Vec<Node> {
        let Some(object) = root.as_object() else {
            self.problem(path, "must be an object with a \"Conditions\" array");
            return Vec::new();
        };
        if let Some(wrapped) = object.get("HumanLoopActivationConditions") {
            let path = format!("{path}.HumanLoopActivationConditions");
            return match wrapped {
                Value::String(text) => match serde_json::from_str::<Value>(text) {
                    Ok(inner) => self.document(&inner, &path),
                    Err(e) => {
                        self.problem(&path, format!("not valid JSON: {e}"));
                        Vec::new()
                    }
                },
                inner => self.document(inner, &path),
            };
        }
        if !object.contains_key("Conditions")
            && ["ConditionType", "And", "Or"]
                .iter()
                .any(|k| object.contains_key(*k))
        {
            self.problem(
                path,
                "is a single condition; wrap it as {\"Conditions\": [ … ]}",
            );
            return Vec::new();
        }
        self.unknown_keys(object, path, &["Conditions"]);
        let conditions_path = format!("{path}.Conditions");
        match object.get("Conditions") {
            None => {
                self.problem(path, "needs a \"Conditions\" array");
                Vec::new()
            }
            Some(Value::Array(items)) if items.is_empty() => {
                self.problem(&conditions_path, "must list at least one condition");
                Vec::new()
            }
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| self.condition(item, &format!("{conditions_path}[{i}]")))
                .collect(),
            Some(_) => {
                self.problem(&conditions_path, "must be an array of conditions");
                Vec::new()
            }
        }
    }

    fn unknown_keys(&mut self, object: &Map<String, Value>, path: &str, known: &[&str]) {
        for key in object.keys().filter(|k| !known.contains(&k.as_str())) {
            self.problem(
                &format!("{path}.{key}"),
                format!("unknown key; expected one of: {}", known.join(", ")),
            );
        }
    }

    fn condition(&mut self, value: &Value, path: &str) -> Option<Node> {
        let Some(object) = value.as_object() else {
            self.problem(
                path,
                "a condition is an object with ConditionType, And or Or",
            );
            return None;
        };
        let forms: Vec<&str> = ["ConditionType", "And", "Or"]
            .into_iter()
            .filter(|k| object.contains_key(*k))
            .collect();
        match forms.as_slice() {
            ["And"] => {
                self.unknown_keys(object, path, &["And"]);
                self.group(&object["And"], &format!("{path}.And"))
                    .map(Node::And)
            }
            ["Or"] => {
                self.unknown_keys(object, path, &["Or"]);
                self.group(&object["Or"], &format!("{path}.Or"))
                    .map(Node::Or)
            }
            ["ConditionType"] => {
                self.unknown_keys(object, path, &["ConditionType", "ConditionParameters"]);
                self.primitive(object, path)
            }
            [] => {
                self.problem(path, "needs a ConditionType, an And or an Or");
                None
            }
            several => {
                self.problem(
                    path,
                    format!(
                        "has {} but may have only one of them",
                        several.join(" and ")
                    ),
                );
                None
            }
        }
    }

    /// `And`/`Or`: at least two conditions (A2I's schema says `minItems: 2`).
    fn group(&mut self, value: &Value, path: &str) -> Option<Vec<Node>> {
        let Some(items) = value.as_array() else {
            self.problem(path, "must be an array of conditions");
            return None;
        };
        if items.len() < 2 {
            self.problem(path, "must combine at least 2 conditions");
        }
        let before = self.problems.len();
        let nodes: Vec<Node> = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| self.condition(item, &format!("{path}[{i}]")))
            .collect();
        (self.problems.len() == before && items.len() >= 2).then_some(nodes)
    }

    fn primitive(&mut self, object: &Map<String, Value>, path: &str) -> Option<Node> {
        let type_path = format!("{path}.ConditionType");
        let Some(kind) = object["ConditionType"].as_str() else {
            self.problem(&type_path, format!("must be a string, one of: {TYPES}"));
            return None;
        };
        let params_path = format!("{path}.ConditionParameters");
        let empty = Map::new();
        let params = match object.get("ConditionParameters") {
            Some(Value::Object(params)) => params,
            Some(_) => {
                self.problem(&params_path, "must be an object");
                return None;
            }
            None => &empty,
        };
        let before = self.problems.len();
        let mut p = Params {
            parser: self,
            params,
            path: &params_path,
        };
        let check = match kind {
            "Sampling" => {
                p.known(&["RandomSamplingPercentage"]);
                // A2I's documented range: a real number between 0.01 and 100.
                p.number("RandomSamplingPercentage", 0.01, 100.0, true)
                    .map(|percent| Check::Sampling { percent })
            }
            "ConfidenceCheck" => {
                p.known(&OPERATORS.map(|(name, _)| name));
                let bounds = p.bounds("", 0.0, 1.0);
                Some(Check::Confidence(bounds))
            }
            "ModerationLabelConfidenceCheck" => {
                let mut known = vec!["ModerationLabelName"];
                known.extend(OPERATORS.map(|(name, _)| name));
                p.known(&known);
                let name = p.string("ModerationLabelName", true);
                let bounds = p.bounds("", 0.0, 100.0);
                name.map(|name| Check::ModerationLabel {
                    name: (name != "*").then_some(name),
                    bounds,
                })
            }
            "ImportantFormKeyConfidenceCheck" => {
                let mut known = vec!["ImportantFormKey", "ImportantFormKeyAliases"];
                let key_value = OPERATORS.map(|(name, _)| format!("KeyValueBlock{name}"));
                let word = OPERATORS.map(|(name, _)| format!("WordBlock{name}"));
                known.extend(key_value.iter().map(String::as_str));
                known.extend(word.iter().map(String::as_str));
                p.known(&known);
                let keys = p.form_keys();
                let key_value = p.bounds_optional("KeyValueBlock", 0.0, 100.0);
                let word = p.bounds_optional("WordBlock", 0.0, 100.0);
                if key_value.is_empty() && word.is_empty() {
                    p.parser.problem(
                        p.path,
                        "needs a KeyValueBlockConfidence… or WordBlockConfidence… comparison",
                    );
                }
                keys.map(|keys| Check::FormKey {
                    keys,
                    key_value,
                    word,
                })
            }
            "MissingImportantFormKey" => {
                p.known(&["ImportantFormKey", "ImportantFormKeyAliases"]);
                match p.form_keys() {
                    Some(keys) if keys.is_empty() => {
                        p.parser.problem(
                            &format!("{params_path}.ImportantFormKey"),
                            "must name a key; \"*\" cannot be missing",
                        );
                        None
                    }
                    keys => keys.map(|keys| Check::MissingFormKey { keys }),
                }
            }
            other => {
                self.problem(
                    &type_path,
                    format!("unknown condition type {other:?}; expected one of: {TYPES}"),
                );
                return None;
            }
        };
        (self.problems.len() == before)
            .then_some(check)
            .flatten()
            .map(|check| Node::Leaf {
                path: path.to_owned(),
                check,
            })
    }
}

/// Where an operator's value goes in [`Bounds`].
type BoundField = fn(&mut Bounds) -> &mut Option<f64>;

/// A2I's comparison operators, suffixes of `Confidence…` parameter names.
const OPERATORS: [(&str, BoundField); 5] = [
    ("ConfidenceEquals", |b| &mut b.equals),
    ("ConfidenceLessThan", |b| &mut b.less_than),
    ("ConfidenceLessThanEquals", |b| &mut b.less_than_equals),
    ("ConfidenceGreaterThan", |b| &mut b.greater_than),
    ("ConfidenceGreaterThanEquals", |b| {
        &mut b.greater_than_equals
    }),
];

struct Params<'p, 'v> {
    parser: &'p mut Parser,
    params: &'v Map<String, Value>,
    path: &'p str,
}

impl Params<'_, '_> {
    fn known(&mut self, known: &[&str]) {
        self.parser.unknown_keys(self.params, self.path, known);
    }

    fn number(&mut self, key: &str, min: f64, max: f64, required: bool) -> Option<f64> {
        let path = format!("{}.{key}", self.path);
        match self.params.get(key) {
            None if required => {
                self.parser.problem(self.path, format!("needs {key}"));
                None
            }
            None => None,
            Some(value) => match value.as_f64() {
                Some(x) if (min..=max).contains(&x) => Some(x),
                _ => {
                    self.parser.problem(
                        &path,
                        format!("must be a number from {min} to {max}, not {value}"),
                    );
                    None
                }
            },
        }
    }

    fn string(&mut self, key: &str, required: bool) -> Option<String> {
        match self.params.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            None if !required => None,
            None => {
                self.parser.problem(self.path, format!("needs {key}"));
                None
            }
            Some(other) => {
                self.parser.problem(
                    &format!("{}.{key}", self.path),
                    format!("must be a non-empty string, not {other}"),
                );
                None
            }
        }
    }

    /// `prefix` + each operator; at least one must be given.
    fn bounds(&mut self, prefix: &str, min: f64, max: f64) -> Bounds {
        let given = OPERATORS
            .iter()
            .any(|(name, _)| self.params.contains_key(&format!("{prefix}{name}")));
        if !given {
            self.parser.problem(
                self.path,
                format!("needs a comparison: {prefix}ConfidenceLessThan, …Equals, …GreaterThan…"),
            );
        }
        self.bounds_optional(prefix, min, max)
    }

    fn bounds_optional(&mut self, prefix: &str, min: f64, max: f64) -> Bounds {
        let mut bounds = Bounds::default();
        for (name, field) in OPERATORS {
            *field(&mut bounds) = self.number(&format!("{prefix}{name}"), min, max, false);
        }
        bounds
    }

    /// `ImportantFormKey` and its aliases; `*` (any key) is the empty list.
    fn form_keys(&mut self) -> Option<Vec<String>> {
        let key = self.string("ImportantFormKey", true)?;
        if key == "*" {
            return Some(Vec::new());
        }
        let mut keys = vec![key];
        match self.params.get("ImportantFormKeyAliases") {
            None => {}
            Some(Value::Array(aliases)) => {
                for (i, alias) in aliases.iter().enumerate() {
                    match alias.as_str() {
                        Some(alias) if !alias.is_empty() => keys.push(alias.to_owned()),
                        _ => {
                            self.parser.problem(
                                &format!("{}.ImportantFormKeyAliases[{i}]", self.path),
                                "must be a non-empty string",
                            );
                            return None;
                        }
                    }
                }
            }
            Some(_) => {
                self.parser.problem(
                    &format!("{}.ImportantFormKeyAliases", self.path),
                    "must be an array of strings",
                );
                return None;
            }
        }
        Some(keys)
    }
}
