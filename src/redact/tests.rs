use std::io::Write;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::apply::{MASKED, UNSETTLED};
use super::*;
use crate::record::{DropReason, DroppedScope, Encoding, Payload};

const KEY: &[u8] = b"0123456789abcdef-test-key";

fn key_file(key: &[u8]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(key).unwrap();
    file.write_all(b"\n").unwrap();
    file
}

fn redactor(toml_text: &str, key: &tempfile::NamedTempFile) -> Redactor {
    let mut config: RedactConfig = toml::from_str(toml_text).unwrap();
    config.hash_key_file = Some(key.path().to_owned());
    Redactor::new(&config).unwrap()
}

use crate::record::test_record as record;

fn json_payload(value: Value) -> Payload {
    Payload {
        content_type: Some("application/json".into()),
        encoding: Encoding::Json,
        body: value,
    }
}

#[test]
fn fields_are_dropped_masked_and_hashed() {
    let key = key_file(KEY);
    let r = redactor(
        r#"
        fields = [
            { path = "request.customer.email", action = "hash" },
            { path = "request.customer.ssn", action = "drop" },
            { path = "request.items[*].note", action = "mask" },
            { path = "response.explanation", action = "drop" },
        ]
        "#,
        &key,
    );
    let mut rec = record(
        json_payload(json!({
            "customer": {"email": "ann@example.com", "ssn": "078-05-1120", "plan": "gold"},
            "items": [{"note": "call me", "sku": 1}, {"sku": 2}],
        })),
        json_payload(json!({"label": "fraud", "explanation": "ann@example.com paid twice"})),
    );
    r.apply(&mut rec);
    let token = HashKey::new(KEY).token(b"ann@example.com");
    assert!(token.starts_with("hmac:") && token.len() == 21, "{token}");
    assert_eq!(
        rec.request.body,
        json!({
            "customer": {"email": token, "plan": "gold"},
            "items": [{"note": MASKED, "sku": 1}, {"sku": 2}],
        })
    );
    assert_eq!(rec.response.payload.body, json!({"label": "fraud"}));
    let redaction = rec.redaction.unwrap();
    assert_eq!(redaction.rules["request.customer.email"], 1);
    assert_eq!(redaction.rules["request.items[*].note"], 1);
    assert_eq!(redaction.rules["response.explanation"], 1);
    assert!(redaction.dropped.is_empty());
}

#[test]
fn detectors_clean_strings_keys_numbers_and_text_bodies() {
    let key = key_file(KEY);
    let r = redactor(
        r#"
        patterns = ["email", "credit_card", "phone", "iban", "ipv4", "ipv6"]
        custom = { employee = "EMP-[0-9]{6}" }
        "#,
        &key,
    );
    let mut rec = record(
        json_payload(json!({
            "text": "I am ann@example.com, card 4111 1111 1111 1111, EMP-123456",
            "ann@example.com": "keyed by email",
            "card": 4111111111111111u64,
            "count": 3,
        })),
        Payload::from_bytes(
            Some("text/plain"),
            b"from 10.1.2.3 / fe80::1, call +44 20 7946 0958, pay DE89 3704 0044 0532 0130 00",
        ),
    );
    r.apply(&mut rec);
    assert_eq!(
        rec.request.body,
        json!({
            "text": "I am [email], card [credit_card], [custom:employee]",
            "[email]": "keyed by email",
            "card": "[credit_card]",
            "count": 3,
        })
    );
    assert_eq!(
        rec.response.payload.body,
        "from [ipv4] / [ipv6], call [phone], pay [iban]"
    );
    let rules = rec.redaction.unwrap().rules;
    assert_eq!(rules["email"], 2);
    assert_eq!(rules["credit_card"], 2);
    assert_eq!(rules["custom:employee"], 1);
    for rule in ["ipv4", "ipv6", "phone", "iban"] {
        assert_eq!(rules[rule], 1, "{rule}");
    }
}

#[test]
fn pattern_hashing_gives_the_field_hashing_token() {
    let key = key_file(KEY);
    let r = redactor(
        r#"
        patterns = ["email"]
        pattern_action = "hash"
        fields = [{ path = "request.email", action = "hash" }]
        "#,
        &key,
    );
    let mut rec = record(
        json_payload(json!({"email": "ann@example.com", "text": "from ann@example.com"})),
        json_payload(json!({})),
    );
    r.apply(&mut rec);
    let token = rec.request.body["email"].as_str().unwrap().to_owned();
    assert_eq!(rec.request.body["text"], format!("from {token}"));
}

#[test]
fn rules_that_cannot_be_applied_drop_what_they_cover() {
    let key = key_file(KEY);
    let r = redactor(
        r#"
        fields = [{ path = "request.customer.email", action = "mask" }]
        patterns = ["email"]
        "#,
        &key,
    );
    // A field rule on a body that is not JSON (here: cut short): the whole body goes.
    let mut cut = record(
        Payload::from_bytes(
            Some("application/json"),
            br#"{"customer":{"email":"ann@example.com","na"#,
        ),
        Payload::from_bytes(None, &[0xff, 0xfe, b'a', b'@', b'b']),
    );
    r.apply(&mut cut);
    assert_eq!(cut.request.body, Value::Null);
    // Detectors cannot read binary: that body goes too.
    assert_eq!(cut.response.payload.body, Value::Null);
    let dropped = cut.redaction.unwrap().dropped;
    assert_eq!(dropped.len(), 2);
    assert_eq!(
        (dropped[0].body.as_str(), dropped[0].scope, dropped[0].why),
        ("request", DroppedScope::Body, DropReason::NotJson)
    );
    assert_eq!(dropped[0].rule, "request.customer.email");
    assert_eq!(
        (dropped[1].body.as_str(), dropped[1].why),
        ("response", DropReason::NotText)
    );

    // The path meets a string where it names a member: that value goes.
    let mut mismatch = record(
        json_payload(json!({"customer": "Ann Lee <ann at example>", "id": 7})),
        json_payload(json!({})),
    );
    r.apply(&mut mismatch);
    assert_eq!(mismatch.request.body, json!({"id": 7}));
    let redaction = mismatch.redaction.unwrap();
    assert_eq!(redaction.dropped[0].scope, DroppedScope::Value);
    assert_eq!(redaction.dropped[0].why, DropReason::PathMismatch);

    // Counted as fail_closed in the metric.
    let metrics = crate::metrics::Metrics::new();
    let counter = RedactionMetrics::register(&metrics, [&r]);
    counter.count(&redaction);
    let text = metrics.render();
    assert!(text.contains("reviewloop_redactions_total{rule=\"fail_closed\"} 1"), "{text}");
    assert!(text.contains("reviewloop_redactions_total{rule=\"email\"} 0"), "{text}");
}

#[test]
fn a_custom_regex_matching_its_own_replacement_settles_as_redacted() {
    let key = key_file(KEY);
    let r = redactor(r#"custom = { brackets = "\\[[a-z:]+\\]" }"#, &key);
    let mut rec = record(json_payload(json!({"a": "x [secret] y"})), json_payload(json!(1)));
    r.apply(&mut rec);
    assert_eq!(rec.request.body, json!({"a": UNSETTLED}));
    assert_eq!(rec.redaction.unwrap().dropped[0].why, DropReason::Unsettled);
}

#[test]
fn the_key_never_shows() {
    let key = key_file(KEY);
    let r = redactor(r#"patterns = ["email"]"#, &key);
    let shown = format!("{r:?}");
    assert!(!shown.contains("0123456789abcdef"), "{shown}");
    assert!(shown.contains("HashKey(<redacted>)"), "{shown}");
}

#[test]
fn an_inactive_redactor_leaves_the_record_as_it_was() {
    let r = Redactor::new(&RedactConfig::default()).unwrap();
    let original = record(
        json_payload(json!({"email": "ann@example.com"})),
        json_payload(json!([0.4])),
    );
    let mut rec = original.clone();
    r.apply(&mut rec);
    assert_eq!(rec, original);
}

// Generators of personal data each built-in detector must find.

fn luhn_complete(digits: &[u8]) -> String {
    let mut number: Vec<u8> = digits.iter().map(|d| b'0' + d % 10).collect();
    for check in b'0'..=b'9' {
        number.push(check);
        if detect::luhn(number.iter().copied()) {
            break;
        }
        number.pop();
    }
    String::from_utf8(number).unwrap()
}

fn iban_complete(country: &str, bban: &str) -> String {
    for check in 0..100 {
        let candidate = format!("{country}{check:02}{bban}");
        if detect::iban_checksum_holds(candidate.as_bytes()) {
            return candidate;
        }
    }
    unreachable!("one check number in 0..100 holds")
}

fn pii() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}(\\.[a-z]{1,5})?@[a-z]{2,8}\\.(com|org|io|de)",
        proptest::collection::vec(0u8..10, 15).prop_map(|d| luhn_complete(&d)),
        proptest::collection::vec(0u8..10, 15).prop_map(|d| {
            let n = luhn_complete(&d);
            format!("{} {} {} {}", &n[..4], &n[4..8], &n[8..12], &n[12..])
        }),
        ("[A-Z]{2}", "[0-9A-Z]{12,20}").prop_map(|(c, b)| iban_complete(&c, &b)),
        "\\+[1-9][0-9] [0-9]{2,3} [0-9]{3,4} [0-9]{4}",
        "\\([0-9]{3}\\) [0-9]{3}-[0-9]{4}",
        (0u8..=255, 0u8..=255, 0u8..=255, 0u8..=255)
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        any::<u128>().prop_map(|n| std::net::Ipv6Addr::from(n).to_string()),
    ]
}

/// Text with personal data inside: filler words, digits and punctuation around each value.
fn text_with_pii() -> impl Strategy<Value = (String, Vec<String>)> {
    proptest::collection::vec(("[a-z0-9 ,.:;()+-]{0,12}", pii()), 1..4).prop_map(|parts| {
        let mut text = String::new();
        let mut values = Vec::new();
        for (filler, value) in parts {
            text.push_str(&filler);
            text.push(' ');
            text.push_str(&value);
            text.push(' ');
            values.push(value);
        }
        (text, values)
    })
}

fn strings_of(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Array(items) => items.iter().for_each(|v| strings_of(v, out)),
        Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                strings_of(v, out);
            }
        }
        _ => {}
    }
}

const ALL_PATTERNS: &str = r#"patterns = ["email", "phone", "credit_card", "iban", "ipv4", "ipv6"]"#;

proptest! {
    /// Whatever the text around it, no value an enabled detector finds is left in the record,
    /// masked or hashed, in a JSON string, a key or a text body.
    #[test]
    fn no_detected_value_survives(
        (text, values) in text_with_pii(),
        hash in any::<bool>(),
        as_key in any::<bool>(),
    ) {
        let key = key_file(KEY);
        let action = if hash { "hash" } else { "mask" };
        let r = redactor(&format!("{ALL_PATTERNS}\npattern_action = \"{action}\""), &key);
        let body = if as_key { json!({ text.clone(): 1 }) } else { json!({"inputs": [text.clone()]}) };
        let mut rec = record(json_payload(body), Payload::from_bytes(Some("text/plain"), text.as_bytes()));
        r.apply(&mut rec);
        let mut strings = Vec::new();
        strings_of(&rec.request.body, &mut strings);
        strings_of(&rec.response.payload.body, &mut strings);
        for s in &strings {
            for builtin in Builtin::ALL {
                let found = builtin.find(s);
                prop_assert!(found.is_empty(), "{} found in {:?}", builtin.as_str(), s);
            }
        }
        let serialized = serde_json::to_string(&rec).unwrap();
        for value in &values {
            prop_assert!(!serialized.contains(value.as_str()), "{} left in {}", value, serialized);
        }
    }

    /// The same value gives the same token under one key, another under another key.
    #[test]
    fn tokens_are_stable_per_key_and_differ_across_keys(
        value in ".{0,40}",
        // A key file's trailing line ends are not key bytes: keep them off the keys' ends.
        key_a in proptest::collection::vec(any::<u8>(), 15..39).prop_map(|k| [k, b"k".to_vec()].concat()),
        key_b in proptest::collection::vec(any::<u8>(), 15..39).prop_map(|k| [k, b"k".to_vec()].concat()),
    ) {
        prop_assume!(key_a != key_b);
        let file_a = key_file(&key_a);
        let file_b = key_file(&key_b);
        let rule = r#"fields = [{ path = "request.v", action = "hash" }]"#;
        let hashed = |file: &tempfile::NamedTempFile| {
            let mut rec = record(json_payload(json!({"v": value})), json_payload(json!(null)));
            redactor(rule, file).apply(&mut rec);
            rec.request.body["v"].as_str().unwrap().to_owned()
        };
        let a1 = hashed(&file_a);
        prop_assert_eq!(&a1, &hashed(&file_a));
        prop_assert_ne!(&a1, &hashed(&file_b));
    }

    /// A body that does not parse under a JSON rule never reaches the record, whatever it
    /// holds: the body is dropped and the record says so.
    #[test]
    fn an_unparsable_body_never_leaks(
        (text, values) in text_with_pii(),
        cut in 1usize..20,
        binary in any::<bool>(),
    ) {
        let key = key_file(KEY);
        let r = redactor(r#"fields = [{ path = "request.customer", action = "drop" }]"#, &key);
        let full = serde_json::to_vec(&json!({"customer": text, "n": 1})).unwrap();
        let mut bytes = full[..full.len() - cut.min(full.len() - 1)].to_vec();
        if binary {
            bytes.push(0xff);
        }
        let mut rec = record(Payload::from_bytes(Some("application/json"), &bytes), json_payload(json!(1)));
        r.apply(&mut rec);
        prop_assert_eq!(&rec.request.body, &Value::Null);
        let serialized = serde_json::to_string(&rec).unwrap();
        for value in &values {
            prop_assert!(!serialized.contains(value.as_str()));
        }
        let dropped = &rec.redaction.unwrap().dropped;
        prop_assert_eq!(dropped[0].why, DropReason::NotJson);
    }
}
