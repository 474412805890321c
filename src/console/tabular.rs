//! Tabular inputs (pure): a request that is one row of features — a CSV row (`text/csv`, as
//! SageMaker's built-in algorithms take it), a flat JSON object, or the one row of
//! `instances`/`inputs` — read as feature/value pairs, and shown as a two-column table
//! whatever the template. Unnamed columns take the route's `features`, else their numbers.

use maud::{Markup, html};
use serde_json::{Map, Value};

use crate::record::{Encoding, Payload};

/// At most this many columns are shown.
pub const MAX_COLUMNS: usize = 1000;

/// One row of features.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// (feature, value as shown).
    pub rows: Vec<(String, String)>,
    /// Rows of the body after the first (a CSV batch): not shown.
    pub more_rows: usize,
    /// Columns beyond [`MAX_COLUMNS`]: not shown.
    pub more_columns: usize,
    /// The route's feature names do not match the number of columns.
    pub named_mismatch: Option<(usize, usize)>,
}

/// The row a request holds, or `None` when it is not tabular.
pub fn read(request: &Payload, features: &[String]) -> Option<Table> {
    let csv = request
        .content_type
        .as_deref()
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/csv"));
    match request.encoding {
        Encoding::Utf8 if csv => {
            let body = request.body.as_str()?;
            let mut lines = body.lines().filter(|line| !line.trim().is_empty());
            let values = csv_fields(lines.next()?);
            let more_rows = lines.count();
            Some(unnamed(values, features, more_rows))
        }
        Encoding::Json => {
            let body = &request.body;
            let batch = ["instances", "inputs"]
                .iter()
                .find_map(|key| body.get(key).and_then(Value::as_array))
                .filter(|rows| rows.len() == 1 && body.as_object().is_some_and(|o| o.len() == 1));
            match batch.map(|rows| &rows[0]) {
                Some(Value::Array(row)) if row.iter().all(is_scalar) && !row.is_empty() => {
                    Some(unnamed(row.iter().map(shown).collect(), features, 0))
                }
                Some(Value::Object(row)) if is_flat(row) => Some(named(row)),
                _ => body.as_object().filter(|o| is_flat(o) && is_features(o)).map(named),
            }
        }
        _ => None,
    }
}

fn is_scalar(value: &Value) -> bool {
    !matches!(value, Value::Array(_) | Value::Object(_))
}

fn is_flat(object: &Map<String, Value>) -> bool {
    !object.is_empty() && object.values().all(is_scalar)
}

/// Keys of a text request's text (`{"prompt": "…", "max_tokens": 64}` is no row of features).
const TEXT_KEYS: [&str; 8] = [
    "inputs", "input", "prompt", "text", "Text", "query", "question", "document",
];

/// Longer strings are prose, not a feature value.
const MAX_FEATURE_CHARS: usize = 200;

/// A flat object of features, not a text request such as `{"prompt": "…", "max_tokens": 64}`
/// or Translate's `{"Text", "SourceLanguageCode", …}`: two or more fields, one of them a number
/// or a boolean, no text key and no long string.
fn is_features(object: &Map<String, Value>) -> bool {
    object.len() >= 2
        && object.values().any(|v| v.is_number() || v.is_boolean())
        && !TEXT_KEYS.iter().any(|key| object.contains_key(*key))
        && object
            .values()
            .filter_map(Value::as_str)
            .all(|s| s.chars().count() <= MAX_FEATURE_CHARS && !s.contains('\n'))
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn named(row: &Map<String, Value>) -> Table {
    Table {
        rows: row
            .iter()
            .take(MAX_COLUMNS)
            .map(|(k, v)| (k.clone(), shown(v)))
            .collect(),
        more_rows: 0,
        more_columns: row.len().saturating_sub(MAX_COLUMNS),
        named_mismatch: None,
    }
}

fn unnamed(values: Vec<String>, features: &[String], more_rows: usize) -> Table {
    let count = values.len();
    Table {
        more_columns: count.saturating_sub(MAX_COLUMNS),
        rows: values
            .into_iter()
            .take(MAX_COLUMNS)
            .enumerate()
            .map(|(i, value)| {
                let name = features.get(i).cloned().unwrap_or_else(|| (i + 1).to_string());
                (name, value)
            })
            .collect(),
        more_rows,
        named_mismatch: (!features.is_empty() && features.len() != count)
            .then_some((features.len(), count)),
    }
}

/// The fields of one CSV line (RFC 4180 quoting: `"a ""b"", c"` is one field).
pub fn csv_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// The table, with what it leaves out said below it.
pub fn view(table: &Table) -> Markup {
    html! {
        table.features {
            thead { tr { th { "Feature" } th { "Value" } } }
            tbody {
                @for (feature, value) in &table.rows {
                    tr { th scope="row" { (feature) } td { (value) } }
                }
            }
        }
        @if table.more_columns > 0 { p.muted { (table.more_columns) " more columns not shown." } }
        @if table.more_rows > 0 { p.muted { "The request holds " (table.more_rows) " more rows: the first is shown." } }
        @if let Some((names, columns)) = table.named_mismatch {
            p.flash.warn { "The route names " (names) " features; this row has " (columns) " values." }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(table: &Table) -> Vec<(&str, &str)> {
        table.rows.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn a_csv_row_takes_the_routes_feature_names_else_column_numbers() {
        let csv = Payload::from_bytes(Some("text/csv; charset=utf-8"), b"5.1,\"a, \"\"b\"\"\",x\n");
        let names = ["sepal_length".to_owned(), "label".to_owned(), "note".to_owned()];
        let table = read(&csv, &names).unwrap();
        assert_eq!(rows(&table), [("sepal_length", "5.1"), ("label", "a, \"b\""), ("note", "x")]);
        assert_eq!(table.named_mismatch, None);
        let table = read(&csv, &[]).unwrap();
        assert_eq!(rows(&table)[0], ("1", "5.1"));
        let short = read(&csv, &names[..1]).unwrap();
        assert_eq!(rows(&short)[1], ("2", "a, \"b\""));
        assert_eq!(short.named_mismatch, Some((1, 3)));
        let batch = Payload::from_bytes(Some("text/csv"), b"1,2\n3,4\n5,6\n");
        assert_eq!(read(&batch, &[]).unwrap().more_rows, 2);
        // Not CSV by its content type: not a table.
        assert_eq!(read(&Payload::from_bytes(Some("text/plain"), b"1,2"), &[]), None);
    }

    #[test]
    fn json_rows_and_not_text_requests() {
        let json = |text: &str| Payload::from_bytes(Some("application/json"), text.as_bytes());
        let object = read(&json(r#"{"age": 42, "income": 5.5e4, "city": "Oslo", "owner": true}"#), &[])
            .unwrap();
        assert_eq!(
            rows(&object),
            [("age", "42"), ("city", "Oslo"), ("income", "55000.0"), ("owner", "true")]
        );
        let instances = read(&json(r#"{"instances": [[1, 2.5, "x"]]}"#), &["a".into()]).unwrap();
        assert_eq!(rows(&instances), [("a", "1"), ("2", "2.5"), ("3", "x")]);
        let inputs = read(&json(r#"{"inputs": [{"a": 1, "b": null}]}"#), &[]).unwrap();
        assert_eq!(rows(&inputs), [("a", "1"), ("b", "null")]);
        for not_tabular in [
            r#"{"inputs": "a sentence"}"#,
            r#"{"Text": "Hallo", "SourceLanguageCode": "de", "TargetLanguageCode": "en"}"#,
            r#"{"instances": [[1, 2], [3, 4]]}"#,
            r#"{"messages": [{"role": "user", "content": "hi"}], "n": 1}"#,
            r#"{"inputs": [[1]], "parameters": {"x": 1}}"#,
            r#"{"prompt": "Write a haiku", "max_tokens": 64, "temperature": 0.7}"#,
            r#"{"note": "line one\nline two", "n": 1}"#,
        ] {
            assert_eq!(read(&json(not_tabular), &[]), None, "{not_tabular}");
        }
    }

    #[test]
    fn values_are_escaped() {
        let csv = Payload::from_bytes(Some("text/csv"), b"<script>x()</script>,1");
        let html = view(&read(&csv, &["<b>f</b>".into()]).unwrap()).into_string();
        assert!(html.contains("&lt;script&gt;") && html.contains("&lt;b&gt;f"), "{html}");
        assert!(!html.contains("<script>") && !html.contains("<b>"), "{html}");
    }
}
