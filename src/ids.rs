//! New ids (record ids, CloudEvent `ce_id`s): UUIDv7 (RFC 9562) made from a per-thread state.
//!
//! `uuid::Uuid::now_v7()` takes a process-wide lock and asks the kernel for random bytes on
//! every call; one is needed per request. Here each thread keeps the last millisecond and the
//! 74 bits after the version and variant (12 of `rand_a`, 62 of `rand_b`), seeded from the
//! thread's RNG (`rand::rng()`, seeded once from the OS) each new millisecond and incremented
//! within one (RFC 9562 §6.2, method 2): ids are time-ordered, strictly increasing per thread,
//! and unique across threads and processes with the odds of 74 random bits.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use uuid::Uuid;

/// The low 74 bits of a v7 UUID's 128 that are not the timestamp, the version or the variant.
const TAIL_BITS: u32 = 74;
/// A fresh millisecond's tail starts below half of its range, so the increments that follow
/// within that millisecond cannot overflow it.
const SEED_BITS: u32 = TAIL_BITS - 1;

thread_local! {
    /// (unix milliseconds, tail) of this thread's last id.
    static LAST: Cell<(u64, u128)> = const { Cell::new((0, 0)) };
}

/// A new UUIDv7.
pub fn new_v7() -> Uuid {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (millis, tail) = LAST.with(|last| {
        let (last_millis, last_tail) = last.get();
        // A clock that stepped back keeps the last millisecond, so ids stay ordered.
        let next = if millis <= last_millis {
            (last_millis, last_tail + 1)
        } else {
            let mut seed = [0u8; 16];
            rand::rng().fill_bytes(&mut seed);
            (millis, u128::from_le_bytes(seed) & ((1 << SEED_BITS) - 1))
        };
        last.set(next);
        next
    });
    let rand_a = (tail >> 62) & 0xfff;
    let rand_b = tail & ((1 << 62) - 1);
    let value = (u128::from(millis & 0xffff_ffff_ffff) << 80)
        | (0x7 << 76)
        | (rand_a << 64)
        | (0b10 << 62)
        | rand_b;
    Uuid::from_u128(value)
}

/// A new UUIDv7 in its hyphenated, lower-case text form.
pub fn new_v7_string() -> String {
    let mut buffer = Uuid::encode_buffer();
    new_v7().hyphenated().encode_lower(&mut buffer).to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_version_7_variant_rfc_and_carry_the_time() {
        let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let id = new_v7();
        let after = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        let (seconds, nanos) = id.get_timestamp().unwrap().to_unix();
        let millis = seconds * 1000 + u64::from(nanos) / 1_000_000;
        assert!((before..=after).contains(&millis), "{before} {millis} {after}");
        let text = new_v7_string();
        assert_eq!(Uuid::parse_str(&text).unwrap().get_version_num(), 7);
        assert_eq!(text, text.to_ascii_lowercase());
        assert_eq!(text.len(), 36);
    }

    #[test]
    fn ids_increase_within_a_thread_and_never_repeat_across_threads() {
        let per_thread = 50_000;
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let ids: Vec<Uuid> = (0..per_thread).map(|_| new_v7()).collect();
                    assert!(ids.windows(2).all(|w| w[0] < w[1]), "not increasing");
                    ids
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for thread in threads {
            for id in thread.join().unwrap() {
                assert!(seen.insert(id), "{id} repeated");
            }
        }
        assert_eq!(seen.len(), 4 * per_thread);
    }

    #[test]
    fn a_new_millisecond_reseeds_so_threads_do_not_share_a_sequence() {
        let a = std::thread::spawn(new_v7).join().unwrap();
        let b = std::thread::spawn(new_v7).join().unwrap();
        // Same or next millisecond, but 74 random bits apart.
        assert_ne!(a.as_u128() & ((1 << 62) - 1), b.as_u128() & ((1 << 62) - 1));
    }
}
