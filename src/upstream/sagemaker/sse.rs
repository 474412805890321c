//! Server-sent event framing of a SageMaker response stream's payload parts (pure).
//!
//! A payload part is a slice of the model's output cut wherever SageMaker chose: it may end in
//! the middle of a line or of a UTF-8 character. What the client gets depends on what the model
//! streams (the stream's content type):
//! - `text/event-stream` (TGI and other servers that already speak SSE): the bytes unchanged;
//! - JSON lines (`application/jsonlines`, `application/x-ndjson`, …, as LMI streams): one event
//!   per line, so every event's data is one whole JSON document;
//! - anything else: one event per payload part, as it arrives.
//!
//! Event data keeps the model's bytes, except that a CR or CRLF line break becomes LF: SSE has
//! no way to carry a bare CR. A UTF-8 character split across parts is held back until it is
//! whole, so each event is valid text.

use bytes::Bytes;

/// A line longer than this is sent in pieces rather than held back without bound.
const MAX_PENDING_LINE: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The model already streams server-sent events.
    Passthrough,
    /// One event per line of output.
    PerLine,
    /// One event per payload part.
    PerPart,
}

impl Framing {
    /// The framing for a model's streaming content type.
    pub fn for_content_type(content_type: Option<&str>) -> Framing {
        let essence = content_type
            .and_then(|ct| ct.split(';').next())
            .map(|ct| ct.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match essence.as_str() {
            "text/event-stream" => Framing::Passthrough,
            "application/jsonlines"
            | "application/jsonl"
            | "application/x-jsonlines"
            | "application/x-ndjson"
            | "application/ndjson" => Framing::PerLine,
            _ => Framing::PerPart,
        }
    }
}

/// Turns payload parts into server-sent event bytes.
#[derive(Debug)]
pub struct SseFramer {
    framing: Framing,
    /// Bytes not yet sent: an incomplete line (per line) or an incomplete character or a
    /// trailing CR (per part).
    pending: Vec<u8>,
}

impl SseFramer {
    pub fn new(framing: Framing) -> SseFramer {
        SseFramer {
            framing,
            pending: Vec::new(),
        }
    }

    /// The bytes to send for one payload part; empty when nothing is complete yet.
    pub fn push(&mut self, part: &[u8]) -> Bytes {
        match self.framing {
            Framing::Passthrough => Bytes::copy_from_slice(part),
            Framing::PerPart => {
                self.pending.extend_from_slice(part);
                let keep = held_back_suffix(&self.pending);
                let ready: Vec<u8> = self.pending.drain(..self.pending.len() - keep).collect();
                let mut out = Vec::new();
                write_event(&ready, &mut out);
                Bytes::from(out)
            }
            Framing::PerLine => {
                self.pending.extend_from_slice(part);
                let mut out = Vec::new();
                let mut start = 0;
                while let Some(offset) = self.pending[start..].iter().position(|&b| b == b'\n') {
                    let end = start + offset;
                    write_event(&self.pending[start..end], &mut out);
                    start = end + 1;
                }
                self.pending.drain(..start);
                if self.pending.len() > MAX_PENDING_LINE {
                    let keep = held_back_suffix(&self.pending);
                    let piece: Vec<u8> = self.pending.drain(..self.pending.len() - keep).collect();
                    write_event(&piece, &mut out);
                }
                Bytes::from(out)
            }
        }
    }

    /// The bytes still held back, sent when the stream ends.
    pub fn finish(&mut self) -> Bytes {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        write_event(&rest, &mut out);
        Bytes::from(out)
    }
}

/// An `error` event: what the client learns when the stream fails after its head was sent.
pub fn error_event(error_type: &str, message: &str) -> Bytes {
    let data = serde_json::json!({ "error": error_type, "message": message }).to_string();
    Bytes::from(format!("event: error\ndata: {data}\n\n"))
}

/// Writes `data` as one event: a `data:` field per line, then the blank line that dispatches.
/// Empty data writes nothing (SSE clients would not dispatch it anyway).
fn write_event(data: &[u8], out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    let mut rest = data;
    loop {
        let line_end = rest.iter().position(|&b| b == b'\n' || b == b'\r');
        let (line, next) = match line_end {
            Some(i) => {
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                (&rest[..i], Some(&rest[i + skip..]))
            }
            None => (rest, None),
        };
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line);
        out.push(b'\n');
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    out.push(b'\n');
}

/// How many trailing bytes to hold back: an incomplete UTF-8 character, or a CR whose LF may
/// come in the next part.
fn held_back_suffix(bytes: &[u8]) -> usize {
    if bytes.last() == Some(&b'\r') {
        return 1;
    }
    // A character is at most 4 bytes: look for its lead byte among the last 3.
    for back in 1..=bytes.len().min(3) {
        let byte = bytes[bytes.len() - back];
        let width = match byte {
            0x80..=0xBF => continue, // a continuation byte: keep looking for the lead
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => return 0,
        };
        return if width > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client's reading of an event stream (the WHATWG algorithm, `data` fields only).
    fn parse_events(stream: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(stream).expect("events are UTF-8");
        let mut events = Vec::new();
        let mut data: Option<String> = None;
        for line in text.split('\n') {
            if line.is_empty() {
                if let Some(mut d) = data.take() {
                    d.pop(); // the LF after the last data line is not part of the data
                    events.push(d);
                }
            } else if let Some(value) = line.strip_prefix("data: ") {
                let d = data.get_or_insert_with(String::new);
                d.push_str(value);
                d.push('\n');
            }
        }
        events
    }

    /// Feeds `input` in parts cut at `cuts` (positions, any order) and collects the output.
    fn frame(framing: Framing, input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut positions: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        positions.push(0);
        positions.push(input.len());
        positions.sort_unstable();
        positions.dedup();
        let mut framer = SseFramer::new(framing);
        let mut out = Vec::new();
        for pair in positions.windows(2) {
            let piece = framer.push(&input[pair[0]..pair[1]]);
            // Each piece must be valid on its own: the client may render it right away.
            assert!(
                std::str::from_utf8(&piece).is_ok(),
                "piece split a character"
            );
            out.extend_from_slice(&piece);
        }
        out.extend_from_slice(&framer.finish());
        out
    }

    #[test]
    fn framing_follows_the_models_content_type() {
        assert_eq!(
            Framing::for_content_type(Some("text/event-stream; charset=utf-8")),
            Framing::Passthrough
        );
        assert_eq!(
            Framing::for_content_type(Some("application/jsonlines")),
            Framing::PerLine
        );
        assert_eq!(
            Framing::for_content_type(Some("Application/X-NDJSON")),
            Framing::PerLine
        );
        assert_eq!(
            Framing::for_content_type(Some("application/json")),
            Framing::PerPart
        );
        assert_eq!(Framing::for_content_type(None), Framing::PerPart);
    }

    #[test]
    fn a_part_becomes_one_event_and_its_newlines_data_lines() {
        let mut framer = SseFramer::new(Framing::PerPart);
        assert_eq!(&framer.push(b"hello")[..], b"data: hello\n\n");
        assert_eq!(&framer.push(b"a\nb\n")[..], b"data: a\ndata: b\ndata: \n\n");
        assert_eq!(parse_events(b"data: a\ndata: b\ndata: \n\n"), ["a\nb\n"]);
        assert!(framer.finish().is_empty());
    }

    #[test]
    fn a_split_character_waits_for_its_other_half() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut framer = SseFramer::new(Framing::PerPart);
        let first = framer.push(&[b'1', euro[0], euro[1]]);
        assert_eq!(&first[..], b"data: 1\n\n");
        let second = framer.push(&[euro[2], b'2']);
        assert_eq!(std::str::from_utf8(&second).unwrap(), "data: €2\n\n");
    }

    #[test]
    fn json_lines_become_one_event_each_whatever_the_cuts() {
        let input = b"{\"token\":{\"text\":\"Hel\"}}\n{\"token\":{\"text\":\"lo\"}}\n";
        let mut framer = SseFramer::new(Framing::PerLine);
        assert!(framer.push(&input[..10]).is_empty(), "half a line waits");
        let rest = framer.push(&input[10..]);
        assert_eq!(
            parse_events(&rest),
            [
                "{\"token\":{\"text\":\"Hel\"}}",
                "{\"token\":{\"text\":\"lo\"}}"
            ]
        );
    }

    #[test]
    fn event_stream_output_passes_through_unchanged() {
        let mut framer = SseFramer::new(Framing::Passthrough);
        assert_eq!(&framer.push(b"data:{\"x\"")[..], b"data:{\"x\"");
        assert!(framer.finish().is_empty());
    }

    #[test]
    fn error_event_is_json_data() {
        let event = error_event("model_stream_error", "StreamBroken: \"reset\"");
        assert!(event.starts_with(b"event: error\ndata: {"));
        let data = &parse_events(&event)[0];
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["message"], "StreamBroken: \"reset\"");
    }

    proptest! {
        #[test]
        fn per_part_events_rejoin_to_the_output(
            text in "[a-zé€😀\n ]{0,60}",
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let out = frame(Framing::PerPart, text.as_bytes(), &cuts);
            prop_assert_eq!(parse_events(&out).concat(), text);
        }

        #[test]
        fn per_line_events_are_the_lines(
            text in "[a-z€{}\":\n]{0,80}",
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let out = frame(Framing::PerLine, text.as_bytes(), &cuts);
            let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
            prop_assert_eq!(parse_events(&out), lines);
        }

        #[test]
        fn crlf_split_across_parts_is_one_line_break(
            before in "[a-z]{1,5}", after in "[a-z]{1,5}",
        ) {
            let input = format!("{before}\r\n{after}");
            let cut = before.len() + 1; // between CR and LF
            let out = frame(Framing::PerPart, input.as_bytes(), &[cut]);
            prop_assert_eq!(parse_events(&out).concat(), format!("{before}\n{after}"));
        }
    }
}
