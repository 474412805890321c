//! Entity spans from a model's answer, placed in the source text (pure).
//!
//! Offsets come from the model and are attacker-controlled: they may be out of range, reversed,
//! overlapping, inside a character, or counted in another unit than Rust's bytes (Comprehend
//! and Python count code points, JavaScript UTF-16 units). Placing never panics: each span is
//! placed on whole characters of the text, or left unplaced with the reason, and the page shows
//! both.

use std::ops::Range;

use serde_json::Value;

/// At most this many spans are read from one answer (a page of thousands helps nobody).
pub const MAX_SPANS: usize = 500;

/// One entity as the model answered it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// The model's offsets, in its unit; `None` when absent or not a non-negative integer.
    pub start: Option<u64>,
    pub end: Option<u64>,
    pub label: String,
    pub score: Option<f64>,
    /// The text the model says the span covers (Comprehend `Text`, Hugging Face `word`).
    pub text: Option<String>,
}

/// What a span's offsets count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Unicode code points (Comprehend, Python: Hugging Face pipelines).
    Chars,
    /// UTF-16 code units (JavaScript).
    Utf16,
    /// UTF-8 bytes (Rust, Go).
    Bytes,
}

/// Why a span is not highlighted in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unplaced {
    NoOffsets,
    Reversed,
    Empty,
    BeyondText,
    Overlaps,
    NoText,
}

impl Unplaced {
    pub fn as_str(self) -> &'static str {
        match self {
            Unplaced::NoOffsets => "no offsets",
            Unplaced::Reversed => "its end is before its start",
            Unplaced::Empty => "empty",
            Unplaced::BeyondText => "beyond the end of the text",
            Unplaced::Overlaps => "overlaps another span",
            Unplaced::NoText => "no source text to place it in",
        }
    }
}

/// A span and where it lies in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The span's position in the model's answer (the form's field names use it).
    pub index: usize,
    pub span: Span,
    /// Byte range in the text, on character boundaries; `Err` when it cannot be shown there.
    pub at: Result<Range<usize>, Unplaced>,
    /// The range was cut at the end of the text or widened to whole characters.
    pub adjusted: bool,
}

/// The spans of an entity answer: Comprehend `{"Entities": [{BeginOffset, EndOffset, Type,
/// Score, Text}]}` (or the first of a batch's `ResultList`), Hugging Face token classification
/// `[{entity_group | entity, score, word, start, end}]` (or the first of a batch). `None` when
/// the answer is not one of these shapes.
pub fn read(body: &Value) -> Option<Vec<Span>> {
    let (items, hugging_face) = match body {
        Value::Object(o) => {
            let entities = o.get("Entities").or_else(|| {
                o.get("ResultList")?
                    .as_array()?
                    .first()?
                    .get("Entities")
            })?;
            (entities.as_array()?, false)
        }
        Value::Array(items) => match items.first() {
            Some(Value::Array(_)) => return read(&items[0]),
            Some(_) if items.iter().all(is_token_entity) => (items, true),
            _ => return None,
        },
        _ => return None,
    };
    let spans = items
        .iter()
        .take(MAX_SPANS)
        .filter_map(|item| {
            let get = |comprehend: &str, hf: &str| item.get(if hugging_face { hf } else { comprehend });
            let label = if hugging_face {
                item.get("entity_group").or_else(|| item.get("entity"))
            } else {
                item.get("Type")
            };
            Some(Span {
                start: get("BeginOffset", "start").and_then(offset),
                end: get("EndOffset", "end").and_then(offset),
                label: scalar(label?)?,
                score: get("Score", "score")
                    .and_then(Value::as_f64)
                    .filter(|s| s.is_finite()),
                text: get("Text", "word").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect();
    Some(spans)
}

fn is_token_entity(item: &Value) -> bool {
    item.get("entity_group").is_some() || item.get("entity").is_some()
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A non-negative integer offset (`3` or `3.0`); anything else is no offset.
fn offset(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        let f = value.as_f64()?;
        (f >= 0.0 && f.fract() == 0.0 && f < 9.0e15).then_some(f as u64)
    })
}

/// Character boundaries of a text, counted in a unit: sorted pairs (offset in the unit, byte
/// offset), one per boundary including the end.
struct Boundaries(Vec<(u64, usize)>);

impl Boundaries {
    fn new(text: &str, unit: Unit) -> Boundaries {
        let mut at = Vec::with_capacity(text.len() / 2 + 1);
        let mut count = 0u64;
        for (byte, c) in text.char_indices() {
            at.push((count, byte));
            count += match unit {
                Unit::Chars => 1,
                Unit::Utf16 => c.len_utf16() as u64,
                Unit::Bytes => c.len_utf8() as u64,
            };
        }
        at.push((count, text.len()));
        Boundaries(at)
    }

    fn len(&self) -> u64 {
        self.0.last().map_or(0, |(count, _)| *count)
    }

    /// The byte offset of the boundary at or before `offset` (`exact` when on one).
    fn floor(&self, offset: u64) -> (usize, bool) {
        match self.0.binary_search_by_key(&offset, |(count, _)| *count) {
            Ok(i) => (self.0[i].1, true),
            Err(i) => (self.0[i.saturating_sub(1)].1, false),
        }
    }

    /// The byte offset of the boundary at or after `offset` (`exact` when on one).
    fn ceil(&self, offset: u64) -> (usize, bool) {
        match self.0.binary_search_by_key(&offset, |(count, _)| *count) {
            Ok(i) => (self.0[i].1, true),
            Err(i) => (self.0.get(i).map_or(self.0[self.0.len() - 1].1, |b| b.1), false),
        }
    }

    /// The byte range of `start..end`, on whole characters.
    fn range(&self, start: u64, end: u64) -> Result<(Range<usize>, bool), Unplaced> {
        if start > end {
            return Err(Unplaced::Reversed);
        }
        if start == end {
            return Err(Unplaced::Empty);
        }
        if start >= self.len() {
            return Err(Unplaced::BeyondText);
        }
        let cut = end > self.len();
        let (from, exact_start) = self.floor(start);
        let (to, exact_end) = self.ceil(end.min(self.len()));
        Ok((from..to, cut || !exact_start || !exact_end))
    }
}

/// The unit in which most spans cover the text the model says they cover; code points (what
/// Comprehend and Python count) when no span says or the units tie.
pub fn unit_of(text: &str, spans: &[Span]) -> Unit {
    // In ASCII every unit counts the same.
    if text.is_ascii() {
        return Unit::Chars;
    }
    let mut best = (Unit::Chars, 0);
    for unit in [Unit::Chars, Unit::Utf16, Unit::Bytes] {
        let boundaries = Boundaries::new(text, unit);
        let matching = spans
            .iter()
            .filter(|span| {
                let (Some(start), Some(end), Some(said)) = (span.start, span.end, &span.text)
                else {
                    return false;
                };
                let Ok((range, false)) = boundaries.range(start, end) else {
                    return false;
                };
                covers(&text[range], said)
            })
            .count();
        if matching > best.1 {
            best = (unit, matching);
        }
    }
    best.0
}

/// Whether `shown` is what the model said: exactly, or as a Hugging Face word piece (`##ing`,
/// a leading space).
fn covers(shown: &str, said: &str) -> bool {
    let said = said.strip_prefix("##").unwrap_or(said).trim();
    !said.is_empty() && shown.trim() == said
}

/// Places each span in `text` (in the unit most spans agree on), in text order; a span that
/// overlaps one placed before it is left unplaced. `text` is `None` when the request has none.
pub fn place(text: Option<&str>, spans: Vec<Span>) -> Vec<Placed> {
    let Some(text) = text else {
        return spans
            .into_iter()
            .enumerate()
            .map(|(index, span)| Placed {
                index,
                span,
                at: Err(Unplaced::NoText),
                adjusted: false,
            })
            .collect();
    };
    let boundaries = Boundaries::new(text, unit_of(text, &spans));
    let mut placed: Vec<Placed> = spans
        .into_iter()
        .enumerate()
        .map(|(index, span)| {
            let at = match (span.start, span.end) {
                (Some(start), Some(end)) => boundaries.range(start, end),
                _ => Err(Unplaced::NoOffsets),
            };
            Placed {
                index,
                span,
                adjusted: at.as_ref().is_ok_and(|(_, adjusted)| *adjusted),
                at: at.map(|(range, _)| range),
            }
        })
        .collect();
    // Text order; at one start the longer span first, so it is the one highlighted.
    placed.sort_by_key(|p| match &p.at {
        Ok(range) => (0, range.start, usize::MAX - range.end, p.index),
        Err(_) => (1, 0, 0, p.index),
    });
    let mut reached = 0;
    for p in &mut placed {
        if let Ok(range) = &p.at {
            if range.start < reached {
                p.at = Err(Unplaced::Overlaps);
                p.adjusted = false;
            } else {
                reached = range.end;
            }
        }
    }
    placed
}

/// A piece of the text: plain, or the span at this position of `placed`.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece<'a> {
    Plain(&'a str),
    Span(&'a str, usize),
}

/// The text cut into plain pieces and placed spans (`placed` as [`place`] returns it).
pub fn pieces<'a>(text: &'a str, placed: &[Placed]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut at = 0;
    for (i, p) in placed.iter().enumerate() {
        let Ok(range) = &p.at else { continue };
        if range.start > at {
            pieces.push(Piece::Plain(&text[at..range.start]));
        }
        pieces.push(Piece::Span(&text[range.clone()], i));
        at = range.end;
    }
    if at < text.len() {
        pieces.push(Piece::Plain(&text[at..]));
    }
    pieces
}

/// Code-point offsets of a byte range of `text` (what the answer carries).
pub fn char_offsets(text: &str, range: &Range<usize>) -> (usize, usize) {
    let start = text[..range.start].chars().count();
    (start, start + text[range.clone()].chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn span(start: u64, end: u64, label: &str, text: Option<&str>) -> Span {
        Span {
            start: Some(start),
            end: Some(end),
            label: label.into(),
            score: None,
            text: text.map(str::to_owned),
        }
    }

    fn shown(text: &str, placed: &[Placed]) -> Vec<(String, Result<String, Unplaced>)> {
        let mut shown: Vec<_> = placed
            .iter()
            .map(|p| {
                (
                    p.span.label.clone(),
                    p.at.clone().map(|range| text[range].to_owned()),
                )
            })
            .collect();
        shown.sort_by(|a, b| a.0.cmp(&b.0));
        shown
    }

    #[test]
    fn comprehend_and_hugging_face_answers_are_read() {
        let comprehend = json!({"Entities": [
            {"BeginOffset": 0, "EndOffset": 4, "Type": "PERSON", "Score": 0.99, "Text": "Jane"},
            {"BeginOffset": "x", "EndOffset": -1, "Type": "DATE", "Text": "today"},
            {"BeginOffset": 1, "EndOffset": 2, "Score": 0.5}
        ]});
        let spans = read(&comprehend).unwrap();
        assert_eq!(spans.len(), 2, "a span without a type is dropped");
        assert_eq!(spans[0], Span { score: Some(0.99), ..span(0, 4, "PERSON", Some("Jane")) });
        assert_eq!((spans[1].start, spans[1].end), (None, None));
        let hf = json!([
            {"entity_group": "PER", "score": 0.9, "word": "Jane", "start": 0, "end": 4},
            {"entity": "B-LOC", "score": 0.8, "word": "Paris", "start": 13.0, "end": 18}
        ]);
        let spans = read(&hf).unwrap();
        assert_eq!(spans[1], Span { score: Some(0.8), ..span(13, 18, "B-LOC", Some("Paris")) });
        assert_eq!(read(&json!([hf])).unwrap().len(), 2, "a batch: the first input");
        let batch = json!({"ResultList": [{"Index": 0, "Entities": []}]});
        assert_eq!(read(&batch), Some(vec![]));
        assert_eq!(read(&json!([{"label": "x", "score": 1}])), None);
        assert_eq!(read(&json!({"Sentiment": "POSITIVE"})), None);
    }

    #[test]
    fn code_points_are_the_default_and_bytes_or_utf16_are_recognised() {
        let text = "Zoë met 😀 Jane in Paris";
        // Code points (Comprehend, Python): "Jane" is at 10..14.
        let chars = vec![span(10, 14, "PER", Some("Jane")), span(18, 23, "LOC", Some("Paris"))];
        assert_eq!(unit_of(text, &chars), Unit::Chars);
        assert_eq!(
            shown(text, &place(Some(text), chars)),
            [("LOC".into(), Ok("Paris".into())), ("PER".into(), Ok("Jane".into()))]
        );
        // The same spans in bytes: ë is 2 bytes and 😀 4.
        let bytes = vec![span(14, 18, "PER", Some("Jane")), span(22, 27, "LOC", Some("Paris"))];
        assert_eq!(unit_of(text, &bytes), Unit::Bytes);
        assert_eq!(shown(text, &place(Some(text), bytes))[1].1, Ok("Jane".into()));
        // In UTF-16 units: 😀 is 2.
        let utf16 = vec![span(11, 15, "PER", Some("Jane"))];
        assert_eq!(unit_of(text, &utf16), Unit::Utf16);
        // No text to compare: code points.
        assert_eq!(unit_of(text, &[span(10, 14, "PER", None)]), Unit::Chars);
    }

    #[test]
    fn hostile_offsets_are_shown_as_far_as_they_can_be() {
        let text = "héllo wörld";
        let placed = place(
            Some(text),
            vec![
                span(9, 3, "reversed", None),
                span(4, 4, "empty", None),
                span(50, 60, "beyond", None),
                span(6, 999, "cut", None),
                span(0, 5, "first", None),
                span(2, 7, "overlapping", None),
                Span { start: None, ..span(0, 1, "no-offsets", None) },
            ],
        );
        assert_eq!(
            shown(text, &placed),
            [
                ("beyond".into(), Err(Unplaced::BeyondText)),
                ("cut".into(), Ok("wörld".into())),
                ("empty".into(), Err(Unplaced::Empty)),
                ("first".into(), Ok("héllo".into())),
                ("no-offsets".into(), Err(Unplaced::NoOffsets)),
                ("overlapping".into(), Err(Unplaced::Overlaps)),
                ("reversed".into(), Err(Unplaced::Reversed)),
            ]
        );
        let cut = placed.iter().find(|p| p.span.label == "cut").unwrap();
        assert!(cut.adjusted);
        // Byte offsets inside "é" (bytes 1..3), recognised as bytes by the other span's text:
        // widened to the whole character.
        let placed = place(
            Some(text),
            vec![span(2, 3, "inside", None), span(7, 13, "w", Some("wörld"))],
        );
        let inside = placed.iter().find(|p| p.span.label == "inside").unwrap();
        assert_eq!(inside.at, Ok(1..3));
        assert!(inside.adjusted);
        assert!(place(None, vec![span(0, 1, "x", None)])[0].at == Err(Unplaced::NoText));
    }

    #[test]
    fn pieces_cover_the_text_once_in_order() {
        let text = "Jane lives in Paris.";
        let placed = place(
            Some(text),
            vec![span(14, 19, "LOC", None), span(0, 4, "PER", None)],
        );
        assert_eq!(
            pieces(text, &placed),
            [
                Piece::Span("Jane", 0),
                Piece::Plain(" lives in "),
                Piece::Span("Paris", 1),
                Piece::Plain("."),
            ]
        );
        assert_eq!(char_offsets("😀 Jane", &(5..9)), (2, 6));
    }

    proptest! {
        /// Any offsets in any unit on any text: no panic, placed ranges are on character
        /// boundaries within the text, in order and disjoint, and the pieces rebuild the text.
        #[test]
        fn placing_never_panics_and_pieces_rebuild_the_text(
            text in "\\PC{0,40}",
            raw in proptest::collection::vec((0u64..120, 0u64..120, proptest::option::of("\\PC{0,6}")), 0..12),
        ) {
            let spans: Vec<Span> = raw
                .into_iter()
                .map(|(start, end, said)| span(start, end, "L", said.as_deref()))
                .collect();
            let count = spans.len();
            let placed = place(Some(&text), spans);
            prop_assert_eq!(placed.len(), count);
            let mut reached = 0;
            for p in &placed {
                if let Ok(range) = &p.at {
                    prop_assert!(text.is_char_boundary(range.start) && text.is_char_boundary(range.end));
                    prop_assert!(range.start >= reached && range.start < range.end && range.end <= text.len());
                    reached = range.end;
                }
            }
            let rebuilt: String = pieces(&text, &placed)
                .into_iter()
                .map(|piece| match piece {
                    Piece::Plain(s) | Piece::Span(s, _) => s,
                })
                .collect();
            prop_assert_eq!(rebuilt, text);
        }

        /// Code-point offsets of a span taken from the text place exactly that text.
        #[test]
        fn code_point_offsets_place_the_text_they_name(
            text in "\\PC{1,40}",
            a in 0usize..40,
            b in 0usize..40,
        ) {
            let chars = text.chars().count();
            let (start, end) = (a.min(b) % chars, (a.max(b) % chars) + 1);
            prop_assume!(start < end);
            let said: String = text.chars().skip(start).take(end - start).collect();
            let placed = place(Some(&text), vec![span(start as u64, end as u64, "L", Some(&said))]);
            let range = placed[0].at.clone().unwrap();
            prop_assert_eq!(char_offsets(&text, &range), (start, end));
        }
    }
}
