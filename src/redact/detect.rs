//! The detectors that find personal data inside a string: the built-in ones (each a regex for
//! candidates and, where the data has one, a checksum that confirms them) and custom regexes.
//!
//! A detector answers with every range of a text it claims, sorted and disjoint. The same
//! answer is the definition of "this text holds an email" used by the tests, so what a
//! detector misses is a documented limit, not a silent leak: see the README's "Sensitive data".

use std::net::Ipv6Addr;
use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// The built-in detectors, in the order they run (the broadest, `phone`, last, so that a card
/// number or an address is claimed by its own rule first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Builtin {
    Email,
    Iban,
    CreditCard,
    Ipv4,
    Ipv6,
    Phone,
}

impl Builtin {
    pub const ALL: [Builtin; 6] = [
        Builtin::Email,
        Builtin::Iban,
        Builtin::CreditCard,
        Builtin::Ipv4,
        Builtin::Ipv6,
        Builtin::Phone,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Builtin::Email => "email",
            Builtin::Iban => "iban",
            Builtin::CreditCard => "credit_card",
            Builtin::Ipv4 => "ipv4",
            Builtin::Ipv6 => "ipv6",
            Builtin::Phone => "phone",
        }
    }

    pub fn parse(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.as_str() == name)
    }

    /// Every range of `text` this detector claims, sorted and disjoint.
    pub fn find(self, text: &str) -> Vec<Range<usize>> {
        // Cheap tests first: most strings hold no '@', no digit or no ':' at all.
        match self {
            Builtin::Email if !text.contains('@') => Vec::new(),
            Builtin::Ipv6 if !text.contains(':') => Vec::new(),
            Builtin::Iban | Builtin::CreditCard | Builtin::Ipv4 | Builtin::Phone
                if !text.bytes().any(|b| b.is_ascii_digit()) =>
            {
                Vec::new()
            }
            Builtin::Email => EMAIL.find_iter(text).map(|m| m.range()).collect(),
            Builtin::Iban => confirmed(&IBAN, text, iban, Retry::Inside),
            Builtin::CreditCard => DIGIT_RUN
                .find_iter(text)
                .flat_map(|m| cards_in_run(text, m.range()))
                .collect(),
            Builtin::Ipv4 => confirmed(&IPV4, text, ipv4, Retry::Inside),
            // A run is maximal: a shorter piece of a refused one is refused too.
            Builtin::Ipv6 => confirmed(&IPV6_RUN, text, ipv6, Retry::After),
            Builtin::Phone => confirmed(&PHONE, text, phone, Retry::Inside),
        }
    }
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.\w{2,}").expect("valid regex"));
/// Two letters, two check digits, 11 to 30 letters or digits in groups of any size.
static IBAN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}").expect("valid regex"));
/// Groups of digits separated by one space or dash: where card numbers are looked for.
static DIGIT_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9]+(?:[ -][0-9]+)*").expect("valid regex"));
static IPV4: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\b").expect("valid regex")
});
static IPV6_RUN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*").expect("valid regex"));
/// International (`+` and 8 or more digits) or national numbers written in groups:
/// `(415) 555-0123`, `415-555-0123`, `020 7946 0958`.
static PHONE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\+[0-9](?:[ .()-]{0,2}[0-9])*|(?:\([0-9]{2,4}\)[ .-]?|\b[0-9]{3}[ .-])[0-9]{3,4}[ .-][0-9]{4}\b")
        .expect("valid regex")
});

/// Where the search goes on after a refused candidate.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// From the candidate's next character, so a real match starting inside a false one is
    /// still found (for candidates of bounded length, or the search could be quadratic).
    Inside,
    /// After the candidate.
    After,
}

/// Candidates of `regex` confirmed (and possibly shortened) by `confirm`.
fn confirmed(
    regex: &Regex,
    text: &str,
    confirm: fn(&str, Range<usize>) -> Option<Range<usize>>,
    retry: Retry,
) -> Vec<Range<usize>> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(candidate) = regex.find_at(text, at) {
        let range = candidate.range();
        match confirm(text, range.clone()) {
            Some(hit) if !hit.is_empty() => {
                at = hit.end;
                found.push(hit);
            }
            _ if retry == Retry::After && !range.is_empty() => at = range.end,
            _ => {
                at = range.start + text[range.start..].chars().next().map_or(1, char::len_utf8);
            }
        }
        if at >= text.len() {
            break;
        }
    }
    found
}

/// An IBAN: the longest prefix of the candidate (15 characters or more) whose mod-97 check
/// holds, so trailing words in capitals (`… 00 EUR`) do not hide it.
fn iban(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let candidate = &text[range.clone()];
    let mut end = candidate.len();
    while end > 0 {
        let prefix = candidate[..end].trim_end();
        let compact: Vec<u8> = prefix.bytes().filter(|b| *b != b' ').collect();
        if compact.len() < 15 {
            return None;
        }
        if compact.len() <= 34 && iban_checksum_holds(&compact) {
            return Some(range.start..range.start + prefix.len());
        }
        end = prefix.len() - 1;
    }
    None
}

/// ISO 13616: move the first four characters to the end, letters as 10..35, mod 97 = 1.
pub fn iban_checksum_holds(compact: &[u8]) -> bool {
    let (head, tail) = compact.split_at(4);
    let mut remainder: u32 = 0;
    for &c in tail.iter().chain(head) {
        let value = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        remainder = if value >= 10 {
            (remainder * 100 + value) % 97
        } else {
            (remainder * 10 + value) % 97
        };
    }
    remainder == 1
}

/// Card numbers inside one run of digit groups: the groups `i..=j` holding 13 to 19 digits
/// that pass the Luhn check (the longest from each first group). A run of digits with no
/// group of the right size (a 30-digit id) is not a card.
fn cards_in_run(text: &str, run: Range<usize>) -> Vec<Range<usize>> {
    let groups: Vec<Range<usize>> = text[run.clone()]
        .split([' ', '-'])
        .scan(run.start, |at, group| {
            let range = *at..*at + group.len();
            *at += group.len() + 1;
            Some(range)
        })
        .collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        let mut digits = 0;
        let mut best = None;
        for j in i..groups.len() {
            digits += groups[j].len();
            if digits > 19 {
                break;
            }
            if digits >= 13 {
                let number = groups[i..=j].iter().flat_map(|g| text[g.clone()].bytes());
                if luhn(number) {
                    best = Some(j);
                }
            }
        }
        match best {
            Some(j) => {
                found.push(groups[i].start..groups[j].end);
                i = j + 1;
            }
            None => i += 1,
        }
    }
    found
}

/// The Luhn check over ASCII digits.
pub fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let mut sum = 0;
    for (i, d) in digits.rev().enumerate() {
        let mut d = u32::from(d - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum % 10 == 0
}

fn ipv4(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    text[range.clone()]
        .split('.')
        .all(|octet| octet.parse::<u16>().is_ok_and(|n| n <= 255))
        .then_some(range)
}

/// A run of hex digits, colons and dots that parses as an IPv6 address with at least two
/// groups written (`fe80::1`, not `std::` or a clock's `12:30:00`), standing alone as a word.
fn ipv6(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let alnum_at = |i: Option<char>| i.is_some_and(char::is_alphanumeric);
    if alnum_at(text[..range.start].chars().next_back()) || alnum_at(text[range.end..].chars().next())
    {
        return None;
    }
    let run = &text[range.clone()];
    let trimmed = run.trim_end_matches('.');
    let groups = trimmed.split(':').filter(|g| !g.is_empty()).count();
    (groups >= 2 && trimmed.parse::<Ipv6Addr>().is_ok())
        .then(|| range.start..range.start + trimmed.len())
}

/// An international number needs 8 digits or more; a grouped national one is taken as is.
fn phone(text: &str, range: Range<usize>) -> Option<Range<usize>> {
    let candidate = &text[range.clone()];
    let digits = candidate.bytes().filter(u8::is_ascii_digit).count();
    (!candidate.starts_with('+') || digits >= 8).then_some(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(builtin: Builtin, text: &str) -> Vec<&str> {
        builtin
            .find(text)
            .into_iter()
            .map(|r| &text[r])
            .collect()
    }

    #[test]
    fn emails() {
        assert_eq!(
            found(Builtin::Email, "write to ann.lee+x@mail.example.co.uk, or bob@x.io."),
            ["ann.lee+x@mail.example.co.uk", "bob@x.io"]
        );
        assert!(found(Builtin::Email, "a @ b, user@localhost").is_empty());
    }

    #[test]
    fn card_numbers_are_luhn_checked() {
        assert_eq!(
            found(Builtin::CreditCard, "card 4111 1111 1111 1111 exp 12/28"),
            ["4111 1111 1111 1111"]
        );
        assert_eq!(
            found(Builtin::CreditCard, "5500-0000-0000-0004;378282246310005"),
            ["5500-0000-0000-0004", "378282246310005"]
        );
        // One digit off fails the check; a long id is no card.
        assert!(found(Builtin::CreditCard, "4111 1111 1111 1112").is_empty());
        assert!(found(Builtin::CreditCard, "123456789012345678901234567890").is_empty());
        // A card next to another number is still found.
        assert_eq!(
            found(Builtin::CreditCard, "order 1234 4111111111111111"),
            ["4111111111111111"]
        );
    }

    #[test]
    fn ibans_are_mod97_checked() {
        assert_eq!(
            found(Builtin::Iban, "pay DE89 3704 0044 0532 0130 00 EUR now"),
            ["DE89 3704 0044 0532 0130 00"]
        );
        assert_eq!(
            found(Builtin::Iban, "GB82WEST12345698765432"),
            ["GB82WEST12345698765432"]
        );
        assert!(found(Builtin::Iban, "DE89 3704 0044 0532 0130 01").is_empty());
    }

    #[test]
    fn addresses() {
        assert_eq!(
            found(Builtin::Ipv4, "from 10.0.0.255 and 192.168.1.1:80, not 300.1.1.1"),
            ["10.0.0.255", "192.168.1.1"]
        );
        assert_eq!(
            found(Builtin::Ipv6, "at [2001:db8::8a2e:370:7334]:443 or fe80::1."),
            ["2001:db8::8a2e:370:7334", "fe80::1"]
        );
        assert!(found(Builtin::Ipv6, "std::vector at 12:30:00, Foo::Bar").is_empty());
        let noise = "1:".repeat(10_000);
        assert_eq!(found(Builtin::Ipv6, &format!("{noise} ::1:2")), ["::1:2"]);
    }

    #[test]
    fn phones() {
        assert_eq!(
            found(
                Builtin::Phone,
                "call +44 20 7946 0958 or (415) 555-0123 or 020 7946 0958"
            ),
            ["+44 20 7946 0958", "(415) 555-0123", "020 7946 0958"]
        );
        assert!(found(Builtin::Phone, "on 2026-12-02 12:30, +33 1, id 4155550123").is_empty());
    }
}
