//! A2I HumanLoopActivationConditions: parsing and evaluation on a response.
//!
//! The grammar is A2I's, unchanged: a top-level `Conditions` list whose members are OR'd, `And`
//! and `Or` nesting, `Sampling {RandomSamplingPercentage}`, A2I's Rekognition and Textract checks
//! on the 0–100 scale, plus `ConfidenceCheck` on the extracted confidence (0–1). A file is
//! checked whole before use: every problem is reported with its JSON path.

mod parse;
#[cfg(test)]
mod tests;

use std::cell::OnceCell;
use std::fmt;

use serde_json::Value;

use crate::prediction::TextractBlocks;
use crate::record::Reason;

pub use parse::parse;

/// A parsed, checked conditions file.
#[derive(Debug, Clone, PartialEq)]
pub struct Conditions {
    roots: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Leaf { path: String, check: Check },
}

/// One primitive condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Check {
    /// `Sampling`: this percentage of keys, chosen deterministically.
    Sampling { percent: f64 },
    /// `ConfidenceCheck`: the extracted confidence (0–1) against the bounds.
    Confidence(Bounds),
    /// `ModerationLabelConfidenceCheck`: a Rekognition moderation label (`None` = `*`, any).
    ModerationLabel {
        name: Option<String>,
        bounds: Bounds,
    },
    /// `ImportantFormKeyConfidenceCheck`: a Textract key (empty = `*`, any) and its blocks.
    FormKey {
        keys: Vec<String>,
        key_value: Bounds,
        word: Bounds,
    },
    /// `MissingImportantFormKey`: none of the key's spellings was found in a Textract document.
    MissingFormKey { keys: Vec<String> },
}

/// A2I's comparison operators; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bounds {
    pub equals: Option<f64>,
    pub less_than: Option<f64>,
    pub less_than_equals: Option<f64>,
    pub greater_than: Option<f64>,
    pub greater_than_equals: Option<f64>,
}

impl Bounds {
    pub fn is_empty(&self) -> bool {
        *self == Bounds::default()
    }

    pub fn holds(&self, x: f64) -> bool {
        self.equals.is_none_or(|v| x == v)
            && self.less_than.is_none_or(|v| x < v)
            && self.less_than_equals.is_none_or(|v| x <= v)
            && self.greater_than.is_none_or(|v| x > v)
            && self.greater_than_equals.is_none_or(|v| x >= v)
    }
}

impl fmt::Display for Bounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = [
            ("=", self.equals),
            ("<", self.less_than),
            ("<=", self.less_than_equals),
            (">", self.greater_than),
            (">=", self.greater_than_equals),
        ];
        let mut first = true;
        for (op, value) in parts {
            if let Some(value) = value {
                if !first {
                    f.write_str(" and ")?;
                }
                write!(f, "{op} {value}")?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A problem in a conditions file: where (`$.Conditions[1].And[0]`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// What a response offers the conditions.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The extracted confidence, if any.
    pub confidence: Option<f64>,
    /// The response's JSON, for A2I's Rekognition and Textract checks.
    pub response: Option<&'a Value>,
    /// Where the record's sampling key falls in [0, 100): `Sampling {p}` fires below `p`.
    pub sample_point: f64,
}

/// A condition that fired, and the reason it gives the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    pub reason: Reason,
    pub description: String,
    /// A `Sampling` condition's percentage.
    pub sampling: Option<f64>,
}

impl Conditions {
    /// Every condition that fired, in file order. A top-level condition that evaluates true
    /// contributes every primitive condition that made it true (A2I evaluates all of them, and
    /// asks reviewers about each). A primitive check fired `low_confidence`, a `Sampling`
    /// `sampled`; checks ANDed with a `Sampling` only narrow what is sampled, so they are
    /// `sampled` too.
    pub fn evaluate(&self, facts: &Facts<'_>) -> Vec<Fired> {
        let context = Context {
            facts,
            form: OnceCell::new(),
        };
        self.roots
            .iter()
            .filter_map(|root| context.node(root))
            .flatten()
            .collect()
    }

    /// Every `RandomSamplingPercentage` in the file, in order.
    pub fn sampling_percentages(&self) -> Vec<f64> {
        fn walk(node: &Node, out: &mut Vec<f64>) {
            match node {
                Node::And(children) | Node::Or(children) => {
                    children.iter().for_each(|c| walk(c, out))
                }
                Node::Leaf {
                    check: Check::Sampling { percent },
                    ..
                } => out.push(*percent),
                Node::Leaf { .. } => {}
            }
        }
        let mut out = Vec::new();
        self.roots.iter().for_each(|r| walk(r, &mut out));
        out
    }

    /// Whether any condition reads the response's Textract blocks or Rekognition labels.
    pub fn reads_response(&self) -> bool {
        fn walk(node: &Node) -> bool {
            match node {
                Node::And(children) | Node::Or(children) => children.iter().any(walk),
                Node::Leaf { check, .. } => {
                    !matches!(check, Check::Sampling { .. } | Check::Confidence(_))
                }
            }
        }
        self.roots.iter().any(walk)
    }
}

struct Context<'a> {
    facts: &'a Facts<'a>,
    form: OnceCell<Option<Form>>,
}

impl Context<'_> {
    /// `Some(fired)` when the node is true.
    fn node(&self, node: &Node) -> Option<Vec<Fired>> {
        match node {
            Node::And(children) => {
                // Evaluate all (A2I does), then require all.
                let results: Vec<Option<Vec<Fired>>> =
                    children.iter().map(|c| self.node(c)).collect();
                let mut fired: Vec<Fired> = results
                    .into_iter()
                    .collect::<Option<Vec<_>>>()?
                    .into_iter()
                    .flatten()
                    .collect();
                if fired.iter().any(|f| f.reason == Reason::Sampled) {
                    fired.iter_mut().for_each(|f| f.reason = Reason::Sampled);
                }
                Some(fired)
            }
            Node::Or(children) => {
                let fired: Vec<Vec<Fired>> = children.iter().filter_map(|c| self.node(c)).collect();
                (!fired.is_empty()).then(|| fired.into_iter().flatten().collect())
            }
            Node::Leaf { path, check } => self.leaf(check).map(|(reason, what)| {
                vec![Fired {
                    reason,
                    description: format!("{path} {what}"),
                    sampling: match check {
                        Check::Sampling { percent } => Some(*percent),
                        _ => None,
                    },
                }]
            }),
        }
    }

    fn leaf(&self, check: &Check) -> Option<(Reason, String)> {
        let facts = self.facts;
        match check {
            Check::Sampling { percent } => (facts.sample_point < *percent)
                .then(|| (Reason::Sampled, format!("Sampling: {percent}% of records"))),
            Check::Confidence(bounds) => {
                let confidence = facts.confidence?;
                bounds.holds(confidence).then(|| {
                    (
                        Reason::LowConfidence,
                        format!("ConfidenceCheck: confidence {confidence:.4} {bounds}"),
                    )
                })
            }
            Check::ModerationLabel { name, bounds } => {
                let labels = facts.response?.get("ModerationLabels")?.as_array()?;
                let matched: Vec<String> = labels
                    .iter()
                    .filter_map(|label| {
                        let label_name = label.get("Name")?.as_str()?;
                        let confidence = label.get("Confidence")?.as_f64()?;
                        let wanted = name.as_deref().is_none_or(|n| n == label_name);
                        (wanted && bounds.holds(confidence))
                            .then(|| format!("{label_name:?} at {confidence}"))
                    })
                    .collect();
                (!matched.is_empty()).then(|| {
                    (
                        Reason::LowConfidence,
                        format!(
                            "ModerationLabelConfidenceCheck: {} ({bounds})",
                            matched.join(", ")
                        ),
                    )
                })
            }
            Check::FormKey {
                keys,
                key_value,
                word,
            } => {
                let form = self.form()?;
                let matched: Vec<&str> = form
                    .pairs
                    .iter()
                    .filter(|pair| keys.is_empty() || keys.iter().any(|k| same_key(k, &pair.key)))
                    .filter(|pair| {
                        key_value.is_empty()
                            || pair
                                .key_value_confidences
                                .iter()
                                .all(|c| key_value.holds(*c))
                    })
                    .filter(|pair| {
                        word.is_empty() || pair.word_confidences.iter().all(|c| word.holds(*c))
                    })
                    .map(|pair| pair.key.as_str())
                    .collect();
                (!matched.is_empty()).then(|| {
                    let mut bounds = Vec::new();
                    if !key_value.is_empty() {
                        bounds.push(format!("key-value block {key_value}"));
                    }
                    if !word.is_empty() {
                        bounds.push(format!("word blocks {word}"));
                    }
                    (
                        Reason::LowConfidence,
                        format!(
                            "ImportantFormKeyConfidenceCheck: {:?} ({})",
                            matched,
                            bounds.join(", ")
                        ),
                    )
                })
            }
            Check::MissingFormKey { keys } => {
                // Only a Textract document can be missing a form key.
                let form = self.form()?;
                let present = form
                    .pairs
                    .iter()
                    .any(|p| keys.iter().any(|k| same_key(k, &p.key)));
                (!present).then(|| {
                    (
                        Reason::LowConfidence,
                        format!("MissingImportantFormKey: none of {keys:?} found"),
                    )
                })
            }
        }
    }

    fn form(&self) -> Option<&Form> {
        self.form
            .get_or_init(|| self.facts.response.and_then(Form::read))
            .as_ref()
    }
}

/// Form keys match exactly (case included), except for surrounding blanks and a trailing colon:
/// Textract reads a printed `Name:` with its colon, and A2I's examples name it `Name`.
fn same_key(wanted: &str, found: &str) -> bool {
    fn normal(k: &str) -> &str {
        k.trim().trim_end_matches(':').trim_end()
    }
    normal(wanted) == normal(found)
}

/// The key-value pairs of a Textract `AnalyzeDocument` response (FORMS).
#[derive(Debug, Default)]
struct Form {
    pairs: Vec<Pair>,
}

#[derive(Debug)]
struct Pair {
    /// The key's words, space-separated.
    key: String,
    /// The KEY block's and its VALUE block's confidences.
    key_value_confidences: Vec<f64>,
    /// The confidences of the words making up the key and the value.
    word_confidences: Vec<f64>,
}

impl Form {
    /// `None` unless the response is a Textract document (it has `Blocks`).
    fn read(response: &Value) -> Option<Form> {
        let blocks = TextractBlocks::of(response)?;
        let confidence = |b: &Value| b.get("Confidence").and_then(Value::as_f64);
        let pairs = blocks
            .keys()
            .map(|key_block| {
                let key_words = blocks.related(key_block, "CHILD");
                let key = key_words
                    .iter()
                    .filter_map(|w| w.get("Text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(" ");
                let values = blocks.related(key_block, "VALUE");
                let value_words: Vec<&Value> =
                    values.iter().flat_map(|v| blocks.related(v, "CHILD")).collect();
                Pair {
                    key,
                    key_value_confidences: std::iter::once(key_block)
                        .chain(values.iter().copied())
                        .filter_map(confidence)
                        .collect(),
                    word_confidences: key_words
                        .iter()
                        .chain(value_words.iter())
                        .filter_map(|w| confidence(w))
                        .collect(),
                }
            })
            .collect();
        Some(Form { pairs })
    }
}
