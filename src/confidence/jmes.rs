//! `preset = "jmespath"`: a user's expression picks the numbers, `scale` says what they are and
//! `aggregate` folds them into one confidence.
//!
//! The expression may yield a number, a list of numbers (aggregated together) or a list of lists
//! (one instance each, aggregated separately; the response's confidence is the lowest).

use jmespath::{Expression, Rcvar, Variable};
use serde_json::Value;

use super::{Aggregate, Scale};
use super::{Document, min_of, unit};

#[derive(Debug)]
pub struct JmesReader {
    expression: Expression<'static>,
    scale: Scale,
    aggregate: Aggregate,
}

impl JmesReader {
    pub fn new(expression: &str, scale: Scale, aggregate: Aggregate) -> Result<Self, String> {
        let expression = jmespath::compile(expression)
            .map_err(|e| format!("not a valid JMESPath expression: {e}"))?;
        Ok(JmesReader {
            expression,
            scale,
            aggregate,
        })
    }

    pub fn read(&self, doc: &Document<'_>) -> Option<f64> {
        let result = match doc {
            Document::Json(value) => self.expression.search(value),
            // Lines and stream events are searched as one array of their values.
            Document::JsonLines(values) | Document::Sse(values) => {
                self.expression.search(Value::Array(values.clone()))
            }
            Document::Text(_) | Document::Unreadable => return None,
        }
        .ok()?;
        let instances: Vec<Vec<f64>> = match &*result {
            Variable::Number(n) => vec![vec![n.as_f64()?]],
            Variable::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_array()) => {
                items.iter().map(numbers).collect()
            }
            Variable::Array(_) => vec![numbers(&result)],
            _ => return None,
        };
        min_of(instances.iter().map(|values| self.fold(values)))
    }

    /// One instance's numbers ⇒ its confidence.
    fn fold(&self, values: &[f64]) -> Option<f64> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        if self.scale == Scale::Logprob && self.aggregate == Aggregate::Mean {
            // Tokens' log probabilities: the mean is taken in log space (a geometric mean of
            // the probabilities), as for the openai preset.
            return Some((values.iter().sum::<f64>() / values.len() as f64).exp());
        }
        let probabilities: Vec<f64> = values
            .iter()
            .map(|v| match self.scale {
                Scale::Unit => *v,
                Scale::Percent => v / 100.0,
                Scale::Logprob => v.exp(),
            })
            .map(unit)
            .collect::<Option<_>>()?;
        aggregate(self.aggregate, &probabilities)
    }
}

fn numbers(value: &Rcvar) -> Vec<f64> {
    match &**value {
        Variable::Array(items) => items
            .iter()
            .filter_map(|i| match &**i {
                Variable::Number(n) => n.as_f64(),
                _ => None,
            })
            .collect(),
        Variable::Number(n) => n.as_f64().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Folds probabilities in [0, 1]. A single value for `margin` or `entropy` is read as a binary
/// probability `p` against `1 − p`.
pub(crate) fn aggregate(how: Aggregate, p: &[f64]) -> Option<f64> {
    let binary;
    let p = match (how, p) {
        (Aggregate::Margin | Aggregate::Entropy, [x]) => {
            binary = [*x, 1.0 - x];
            &binary[..]
        }
        _ => p,
    };
    let value = match how {
        Aggregate::Min => p.iter().copied().reduce(f64::min)?,
        Aggregate::Max => p.iter().copied().reduce(f64::max)?,
        Aggregate::Mean => p.iter().sum::<f64>() / p.len() as f64,
        Aggregate::Margin => {
            let (mut first, mut second) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
            for &x in p {
                if x > first {
                    second = first;
                    first = x;
                } else if x > second {
                    second = x;
                }
            }
            first - second
        }
        Aggregate::Entropy => {
            // 1 − H(p)/ln(n) on the normalised vector: 1 when sure, 0 when uniform.
            let total: f64 = p.iter().sum();
            if total <= 0.0 || p.len() < 2 {
                return None;
            }
            let entropy: f64 = p
                .iter()
                .map(|x| x / total)
                .filter(|x| *x > 0.0)
                .map(|x| -x * x.ln())
                .sum();
            1.0 - entropy / (p.len() as f64).ln()
        }
    };
    unit(value)
}
