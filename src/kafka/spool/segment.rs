//! The spool's on-disk format (pure: bytes in, bytes out).
//!
//! A segment file starts with [`MAGIC`] and holds frames back to back:
//!
//! ```text
//! frame = len: u32 LE | crc32(body): u32 LE | body (len bytes)
//! body  = id_len: u16 LE | id | time_len: u16 LE | time | ce_id_len: u16 LE | ce_id
//!         | traceparent_len: u16 LE | traceparent (empty: none) | value
//! ```
//!
//! `value` is the record exactly as it went (or would have gone) to Kafka, so a replayed record
//! is byte for byte the original, CloudEvents `ce_id` included. A frame that is cut short (the
//! process was killed mid-write) or whose checksum does not match ends what can be read of its
//! segment: everything before it is returned, the rest is reported as corrupt.

/// The first bytes of every segment: the format and its version.
pub const MAGIC: &[u8; 8] = b"RLSPOOL1";
/// The frame header: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// No frame body is larger (a length field above it is corruption, not a record): librdkafka's
/// `message.max.bytes` tops out at 1 GB, and the sink fits records to it.
pub const MAX_BODY: usize = 1_000_000_000 + 4 * (2 + u16::MAX as usize);

/// One spooled review record: what is needed to send it again exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record id: the Kafka key and `ce_subject`.
    pub id: String,
    /// The record's `time`: `ce_time`.
    pub time: String,
    /// The CloudEvents id of the first attempt, kept so a replay is the same event.
    pub ce_id: String,
    /// The request's `traceparent` (`ce_traceparent`), when it had one.
    pub traceparent: Option<String>,
    /// The record's JSON, as sent.
    pub value: Vec<u8>,
}

impl Entry {
    /// The bytes this entry takes in a segment.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER + 8 + short(&self.id).len() + short(&self.time).len()
            + short(&self.ce_id).len()
            + short(self.traceparent.as_deref().unwrap_or_default()).len()
            + self.value.len()
    }
}

/// Header fields longer than a u16 length can say are cut (ids and times are short; this only
/// guards the format).
fn short(text: &str) -> &[u8] {
    let mut end = text.len().min(u16::MAX as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

/// Appends `entry`'s frame to `out`.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    let traceparent = entry.traceparent.as_deref().unwrap_or_default();
    for field in [&entry.id, &entry.time, &entry.ce_id, traceparent] {
        let bytes = short(field);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(&entry.value);
    let body = &out[start + FRAME_HEADER..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// What a segment's bytes hold.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Every whole, intact record before the first bad one, in write order.
    pub entries: Vec<Entry>,
    /// Bytes from the first bad frame to the end (a torn write or corruption); 0 when clean.
    pub corrupt_bytes: usize,
}

/// Reads a segment: its magic, then frames until the end or the first bad frame.
pub fn decode(segment: &[u8]) -> Decoded {
    let mut decoded = Decoded::default();
    let Some(mut rest) = segment.strip_prefix(MAGIC.as_slice()) else {
        decoded.corrupt_bytes = segment.len();
        return decoded;
    };
    while !rest.is_empty() {
        match decode_frame(rest) {
            Some((entry, used)) => {
                decoded.entries.push(entry);
                rest = &rest[used..];
            }
            None => {
                decoded.corrupt_bytes = rest.len();
                break;
            }
        }
    }
    decoded
}

/// One frame at the start of `bytes` and its length, or `None` when it is torn or corrupt.
fn decode_frame(bytes: &[u8]) -> Option<(Entry, usize)> {
    let header = bytes.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    if len > MAX_BODY {
        return None;
    }
    let body = bytes.get(FRAME_HEADER..FRAME_HEADER + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let mut rest = body;
    let mut field = || -> Option<String> {
        let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let text = std::str::from_utf8(rest.get(2..2 + n)?).ok()?.to_owned();
        rest = &rest[2 + n..];
        Some(text)
    };
    let (id, time, ce_id, traceparent) = (field()?, field()?, field()?, field()?);
    let entry = Entry {
        id,
        time,
        ce_id,
        traceparent: Some(traceparent).filter(|t| !t.is_empty()),
        value: rest.to_vec(),
    };
    Some((entry, FRAME_HEADER + len))
}

/// The file name of segment `seq`: zero-padded, so names sort in write order.
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.seg")
}

/// The sequence number of a segment file name, `None` for any other file.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(i: usize, value: &[u8]) -> Entry {
        Entry {
            id: format!("id-{i}"),
            time: "2026-12-02T12:00:00.000Z".into(),
            ce_id: format!("ce-{i}"),
            // Every other entry carries a trace context, so both encodings round-trip.
            traceparent: i.is_multiple_of(2)
                .then(|| format!("00-{:032x}-00f067aa0ba902b7-01", i + 1)),
            value: value.to_vec(),
        }
    }

    fn segment(entries: &[Entry]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        for e in entries {
            encode(e, &mut out);
        }
        out
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            ".{0,40}",
            ".{0,30}",
            "[a-f0-9-]{0,36}",
            prop::option::of("[a-f0-9-]{1,55}"),
            prop::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(id, time, ce_id, traceparent, value)| Entry {
                id,
                time,
                ce_id,
                traceparent,
                value,
            })
    }

    #[test]
    fn an_empty_segment_holds_nothing_and_is_clean() {
        assert_eq!(decode(MAGIC), Decoded::default());
    }

    #[test]
    fn a_foreign_file_is_corrupt_whole() {
        let decoded = decode(b"not a spool segment");
        assert!(decoded.entries.is_empty());
        assert_eq!(decoded.corrupt_bytes, 19);
    }

    #[test]
    fn a_flipped_byte_in_the_last_record_keeps_the_ones_before() {
        let entries: Vec<Entry> = (0..5).map(|i| entry(i, b"{\"x\":1}")).collect();
        let mut bytes = segment(&entries);
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        let decoded = decode(&bytes);
        assert_eq!(decoded.entries, entries[..4]);
        assert_eq!(decoded.corrupt_bytes, entries[4].frame_len());
    }

    #[test]
    fn file_names_sort_in_sequence_and_read_back() {
        assert_eq!(file_name(7), "00000000000000000007.seg");
        assert!(file_name(9) < file_name(10));
        assert_eq!(parse_file_name(&file_name(123_456)), Some(123_456));
        assert_eq!(parse_file_name("spool.lock"), None);
        assert_eq!(parse_file_name("7.seg"), None);
    }

    proptest! {
        #[test]
        fn every_entry_reads_back_as_written(entries in prop::collection::vec(arb_entry(), 0..20)) {
            let bytes = segment(&entries);
            prop_assert_eq!(
                bytes.len(),
                MAGIC.len() + entries.iter().map(Entry::frame_len).sum::<usize>()
            );
            let decoded = decode(&bytes);
            prop_assert_eq!(decoded.corrupt_bytes, 0);
            prop_assert_eq!(decoded.entries, entries);
        }

        /// A write cut anywhere (a kill mid-append) loses at most the record being written.
        #[test]
        fn a_torn_tail_keeps_every_whole_record_before_it(
            entries in prop::collection::vec(arb_entry(), 1..10),
            cut in any::<prop::sample::Index>(),
        ) {
            let bytes = segment(&entries);
            let keep = MAGIC.len() + cut.index(bytes.len() - MAGIC.len());
            let decoded = decode(&bytes[..keep]);
            let mut whole = 0;
            let mut end = MAGIC.len();
            for e in &entries {
                if end + e.frame_len() > keep {
                    break;
                }
                end += e.frame_len();
                whole += 1;
            }
            prop_assert_eq!(&decoded.entries[..], &entries[..whole]);
            prop_assert_eq!(decoded.corrupt_bytes, keep - end);
        }

        /// Any flipped bit is caught: the damaged record and what follows it are reported,
        /// every record before it is returned intact.
        #[test]
        fn a_flipped_bit_is_detected(
            entries in prop::collection::vec(arb_entry(), 1..10),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut bytes = segment(&entries);
            let pos = MAGIC.len() + at.index(bytes.len() - MAGIC.len());
            bytes[pos] ^= 1 << bit;
            let decoded = decode(&bytes);
            let mut end = MAGIC.len();
            let mut hit = 0;
            for e in &entries {
                if pos < end + e.frame_len() {
                    break;
                }
                end += e.frame_len();
                hit += 1;
            }
            prop_assert_eq!(&decoded.entries[..], &entries[..hit]);
            prop_assert_eq!(decoded.corrupt_bytes, bytes.len() - end);
        }
    }
}
