//! Field paths: their syntax, and finding the values they name in a JSON body.
//!
//! ```text
//! path    = body step*
//! body    = "request" | "response"
//! step    = "." name          a member of an object: [A-Za-z0-9_$-]+
//!         | "[\"" text "\"]"  a member with any name (\" and \\ escaped)
//!         | ".*"              every member of an object
//!         | "[" digits "]"    one element of an array
//!         | "[*]"             every element of an array
//! ```
//!
//! `request` alone names the whole request body.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Request,
    Response,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Member(String),
    AnyMember,
    Element(usize),
    AnyElement,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    pub body: Body,
    pub steps: Vec<Step>,
}

impl FieldPath {
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let root_end = text.find(['.', '[']).unwrap_or(text.len());
        let body = match &text[..root_end] {
            "request" => Body::Request,
            "response" => Body::Response,
            other => {
                return Err(format!(
                    "must start with `request` or `response`, not {other:?}"
                ));
            }
        };
        let mut steps = Vec::new();
        let mut rest = &text[root_end..];
        while !rest.is_empty() {
            let (step, after) = parse_step(rest)?;
            steps.push(step);
            rest = after;
        }
        Ok(FieldPath { body, steps })
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '-')
}

fn parse_step(text: &str) -> Result<(Step, &str), String> {
    if let Some(rest) = text.strip_prefix(".*") {
        return Ok((Step::AnyMember, rest));
    }
    if let Some(rest) = text.strip_prefix('.') {
        let end = rest.find(|c| !is_name_char(c)).unwrap_or(rest.len());
        if end == 0 {
            return Err(format!(
                "expected a name of [A-Za-z0-9_$-] or `*` after '.' at {text:?} \
                 (write [\"…\"] for other names)"
            ));
        }
        return Ok((Step::Member(rest[..end].to_owned()), &rest[end..]));
    }
    if let Some(rest) = text.strip_prefix("[*]") {
        return Ok((Step::AnyElement, rest));
    }
    if let Some(rest) = text.strip_prefix("[\"") {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, escaped @ ('"' | '\\'))) => name.push(escaped),
                    _ => return Err(format!("only \\\" and \\\\ are escapes, at {text:?}")),
                },
                '"' => {
                    return match rest[i + 1..].strip_prefix(']') {
                        Some(after) => Ok((Step::Member(name), after)),
                        None => Err(format!("expected ']' after the quoted name at {text:?}")),
                    };
                }
                c => name.push(c),
            }
        }
        return Err(format!("unterminated quoted name at {text:?}"));
    }
    if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(|| format!("unclosed '[' at {text:?}"))?;
        let index = rest[..end]
            .parse::<usize>()
            .map_err(|_| format!("expected an index, `*` or a quoted name in [] at {text:?}"))?;
        return Ok((Step::Element(index), &rest[end + 1..]));
    }
    Err(format!("expected '.' or '[' at {text:?}"))
}

/// What applying one path to a body found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    /// Values the action was applied to.
    pub applied: u64,
    /// Values dropped because the path met a value of another kind than it names (a string
    /// where it names a member): the path cannot be followed, so whatever is there goes.
    pub failed: u64,
}

/// What the parent does with a visited value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Keep,
    Drop,
}

/// Follows `steps` from `value`, calling `act` on each value found (it answers whether the
/// value is dropped). A missing member or element, or `null`, holds nothing to redact.
pub fn visit(
    value: &mut Value,
    steps: &[Step],
    act: &mut dyn FnMut(&mut Value) -> Fate,
    hits: &mut Hits,
) -> Fate {
    let Some((step, rest)) = steps.split_first() else {
        hits.applied += 1;
        return act(value);
    };
    match (step, value) {
        (_, Value::Null) => {}
        (Step::Member(name), Value::Object(map)) => {
            if let Some(child) = map.get_mut(name)
                && visit(child, rest, act, hits) == Fate::Drop
            {
                map.remove(name);
            }
        }
        (Step::AnyMember, Value::Object(map)) => {
            map.retain(|_, child| visit(child, rest, act, hits) == Fate::Keep);
        }
        (Step::Element(index), Value::Array(items)) => {
            if let Some(child) = items.get_mut(*index)
                && visit(child, rest, act, hits) == Fate::Drop
            {
                *child = Value::Null;
            }
        }
        (Step::AnyElement, Value::Array(items)) => {
            for child in items {
                if visit(child, rest, act, hits) == Fate::Drop {
                    *child = Value::Null;
                }
            }
        }
        _ => {
            hits.failed += 1;
            return Fate::Drop;
        }
    }
    Fate::Keep
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_syntax() {
        let path = FieldPath::parse(r#"request.customers[*]["first name"].emails[0].*"#).unwrap();
        assert_eq!(path.body, Body::Request);
        assert_eq!(
            path.steps,
            [
                Step::Member("customers".into()),
                Step::AnyElement,
                Step::Member("first name".into()),
                Step::Member("emails".into()),
                Step::Element(0),
                Step::AnyMember,
            ]
        );
        assert_eq!(FieldPath::parse("response").unwrap().steps, []);
        assert_eq!(
            FieldPath::parse(r#"response["a\"b\\"]"#).unwrap().steps,
            [Step::Member("a\"b\\".into())]
        );
        for bad in [
            "body.x",
            "request.",
            "request..x",
            "request[",
            "request[x]",
            "request[\"x\"",
            "request[\"x",
            "request x",
            "$.request.x",
            "request.a b",
        ] {
            assert!(FieldPath::parse(bad).is_err(), "{bad} parsed");
        }
    }

    fn run(path: &str, mut body: Value) -> (Value, Hits, Fate) {
        let path = FieldPath::parse(path).unwrap();
        let mut hits = Hits::default();
        let fate = visit(
            &mut body,
            &path.steps,
            &mut |v| {
                if v.is_string() {
                    *v = json!("X");
                    Fate::Keep
                } else {
                    Fate::Drop
                }
            },
            &mut hits,
        );
        (body, hits, fate)
    }

    #[test]
    fn paths_reach_every_value_they_name() {
        let (body, hits, _) = run(
            "request.items[*].email",
            json!({"items": [{"email": "a"}, {"email": 2}, {"name": "n"}, null]}),
        );
        assert_eq!(body, json!({"items": [{"email": "X"}, {}, {"name": "n"}, null]}));
        assert_eq!(hits, Hits { applied: 2, failed: 0 });
    }

    #[test]
    fn a_value_of_the_wrong_kind_is_dropped() {
        // `customer` is a string where the path names its member: it goes, counted.
        let (body, hits, fate) = run(
            "request.customer.email",
            json!({"customer": "ann@x.io", "id": 1}),
        );
        assert_eq!(body, json!({"id": 1}));
        assert_eq!(hits, Hits { applied: 0, failed: 1 });
        assert_eq!(fate, Fate::Keep);
        // The body itself is of the wrong kind: the caller drops the body.
        let (_, hits, fate) = run("request.customer", json!(["ann@x.io"]));
        assert_eq!((hits.failed, fate), (1, Fate::Drop));
        // An element of the wrong kind becomes null.
        let (body, _, _) = run("request[*].x", json!([{"x": "a"}, "ann@x.io"]));
        assert_eq!(body, json!([{"x": "X"}, null]));
    }
}
