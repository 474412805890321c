//! The JSON Schemas in `schemas/` accept what reviewloop writes and what reviewers' tools
//! publish (reviewloop's format and A2I output documents), and reject what breaks the contract.

mod kafka_support;

use std::time::SystemTime;

use kafka_support::{mixed_record, record_with, schema, schema_errors};
use proptest::prelude::*;
use reviewloop::record::{
    Answer, CompletedRecord, DeadLetter, DeadLetterReason, ModelInfo, Payload, Reason,
    RetrainingRecord, rfc3339_millis,
};
use serde_json::{Value, json};

fn assert_valid(name: &str, value: &Value) {
    let errors = schema_errors(&schema(name), value);
    assert!(
        errors.is_empty(),
        "{name} rejects a valid record: {errors:?}\n{value:#}"
    );
}

fn assert_invalid(name: &str, value: &Value, why: &str) {
    assert!(
        !schema(name).is_valid(value),
        "{name} accepts a record with {why}:\n{value:#}"
    );
}

fn review_json() -> Value {
    serde_json::to_value(mixed_record("v", 0).0).unwrap()
}

#[test]
fn review_records_as_the_sink_writes_them_are_valid() {
    for i in 0..6 {
        assert_valid(
            "review",
            &serde_json::to_value(mixed_record("v", i).0).unwrap(),
        );
    }
    // No confidence, several reasons, conditions, no model, truncated.
    let mut record = record_with("x", "text/csv", b"1,2,3\n");
    record.confidence = None;
    record.reasons = vec![Reason::LowConfidence, Reason::Sampled, Reason::Forced];
    record.conditions = vec!["ConfidenceCheck".into()];
    record.model = ModelInfo::default();
    record.truncated = true;
    record.request.content_type = None;
    assert_valid("review", &serde_json::to_value(record).unwrap());
}

#[test]
fn the_review_schema_rejects_what_breaks_the_contract() {
    type Breakage = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Breakage)> = vec![
        (
            "no id",
            Box::new(|v| drop(v.as_object_mut().unwrap().remove("id"))),
        ),
        ("an empty id", Box::new(|v| v["id"] = json!(""))),
        (
            "a time that is not RFC 3339",
            Box::new(|v| v["time"] = json!("yesterday")),
        ),
        (
            "confidence above 1",
            Box::new(|v| v["confidence"] = json!(1.5)),
        ),
        ("no reasons", Box::new(|v| v["reasons"] = json!([]))),
        (
            "an unknown reason",
            Box::new(|v| v["reasons"] = json!(["bored"])),
        ),
        (
            "an unknown encoding",
            Box::new(|v| v["request"]["encoding"] = json!("hex")),
        ),
        (
            "a utf8 body that is not a string",
            Box::new(|v| {
                v["request"]["encoding"] = json!("utf8");
                v["request"]["body"] = json!({"a": 1});
            }),
        ),
        (
            "a base64 body that is not base64",
            Box::new(|v| {
                v["request"]["encoding"] = json!("base64");
                v["request"]["body"] = json!("not base64!");
            }),
        ),
        (
            "a status out of range",
            Box::new(|v| v["response"]["status"] = json!(700)),
        ),
        (
            "no response status",
            Box::new(|v| drop(v["response"].as_object_mut().unwrap().remove("status"))),
        ),
        (
            "a status in the request",
            Box::new(|v| v["request"]["status"] = json!(200)),
        ),
        (
            "sample_percent above 100",
            Box::new(|v| v["sample_percent"] = json!(101)),
        ),
        ("an unknown field", Box::new(|v| v["extra"] = json!(1))),
        (
            "an unknown model field",
            Box::new(|v| v["model"]["name"] = json!("m")),
        ),
    ];
    for (why, break_it) in cases {
        let mut value = review_json();
        break_it(&mut value);
        assert_invalid("review", &value, why);
    }
}

#[test]
fn completed_records_in_reviewloops_format_are_valid() {
    let record = CompletedRecord {
        id: "r1".into(),
        answer: Answer {
            reviewer: "alice".into(),
            answer: json!({"label": "cat"}),
            submitted_at: Some(rfc3339_millis(SystemTime::now())),
            time_spent_seconds: Some(12.5),
        },
    };
    assert_valid("completed", &serde_json::to_value(&record).unwrap());
    // The minimal answer a script would write.
    assert_valid(
        "completed",
        &json!({"id": "r1", "reviewer": "bob", "answer": "dog"}),
    );
    assert_invalid(
        "completed",
        &json!({"id": "r1", "answer": "dog"}),
        "no reviewer",
    );
    assert_invalid(
        "completed",
        &json!({"reviewer": "bob", "answer": "dog"}),
        "no id",
    );
    assert_invalid(
        "completed",
        &json!({"id": "r1", "reviewer": "bob", "answer": "dog", "time_spent_seconds": -1}),
        "a negative time spent",
    );
    assert_invalid("completed", &json!([1, 2]), "not an object");
}

#[test]
fn a2i_output_documents_are_valid_completed_records() {
    // The shape of an A2I output.json (custom task type), as A2I writes it to S3.
    let a2i = json!({
        "flowDefinitionArn": "arn:aws:sagemaker:us-east-1:111122223333:flow-definition/review",
        "humanAnswers": [{
            "acceptanceTime": "2026-11-22T10:00:00.000Z",
            "answerContent": {"sentiment": {"label": "positive"}},
            "submissionTime": "2026-11-22T10:00:12.500Z",
            "timeSpentInSeconds": 12.5,
            "workerId": "a1b2c3d4",
            "workerMetadata": {"identityData": {"identityProviderType": "Cognito", "issuer": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_x", "sub": "s"}}
        }],
        "humanLoopName": "0190f3a2-7c1e-7b4e-9a0d-3f2b1c4d5e6f",
        "inputContent": {"taskObject": "I love it"}
    });
    assert_valid("completed", &a2i);
    let mut no_answers = a2i.clone();
    no_answers["humanAnswers"] = json!([]);
    assert_invalid("completed", &no_answers, "no human answers");
    let mut no_worker = a2i.clone();
    no_worker["humanAnswers"][0]
        .as_object_mut()
        .unwrap()
        .remove("workerId");
    assert_invalid("completed", &no_worker, "an answer without a worker");
}

#[test]
fn retraining_records_as_the_joiner_writes_them_are_valid() {
    let review = mixed_record("t", 0).0;
    let answer = Answer {
        reviewer: "alice".into(),
        answer: json!({"label": "cat"}),
        submitted_at: Some(rfc3339_millis(SystemTime::now())),
        time_spent_seconds: None,
    };
    let record = RetrainingRecord {
        id: review.id,
        time: review.time,
        route: review.route,
        request: review.request,
        response: review.response,
        confidence: review.confidence,
        reasons: review.reasons,
        label: json!({"label": "cat"}),
        agreement: 1.0,
        agreeing: 1,
        answered: 1,
        answers: vec![answer],
        reviewed_at: rfc3339_millis(SystemTime::now()),
        model: review.model,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        model_label: Some("cat".into()),
        model_agreed: Some(true),
        redaction: review.redaction,
    };
    let value = serde_json::to_value(&record).unwrap();
    assert_valid("retraining", &value);
    let mut no_answers = value.clone();
    no_answers["answers"] = json!([]);
    assert_invalid("retraining", &no_answers, "no answers");
    let mut agreement = value.clone();
    agreement["agreement"] = json!(1.2);
    assert_invalid("retraining", &agreement, "agreement above 1");
    let mut bad_trace = value.clone();
    bad_trace["traceparent"] = json!("<script>");
    assert_invalid("retraining", &bad_trace, "a traceparent that is not one");
    let mut no_label = value;
    no_label.as_object_mut().unwrap().remove("label");
    assert_invalid("retraining", &no_label, "no label");
}

#[test]
fn dead_letters_of_every_reason_are_valid() {
    for reason in [
        DeadLetterReason::Invalid,
        DeadLetterReason::Orphan,
        DeadLetterReason::Expired,
        DeadLetterReason::NoAgreement,
    ] {
        let letter = DeadLetter {
            reason,
            id: (reason != DeadLetterReason::Invalid).then(|| "r1".to_owned()),
            source_topic: "reviewloop.completed".into(),
            partition: 2,
            offset: 41,
            detail: Some(format!("{} test", reason.as_str())),
            payload: Payload::from_bytes(Some("application/json"), b"{\"broken\": "),
        };
        assert_valid("dead-letter", &serde_json::to_value(&letter).unwrap());
    }
    let bad = json!({"reason": "lost", "id": null, "source_topic": "t", "partition": 0,
                     "offset": 0, "payload": {"content_type": null, "encoding": "utf8", "body": "x"}});
    assert_invalid("dead-letter", &bad, "an unknown reason");
}

/// The definitions the schemas share are the same text in each file (they are copied so that
/// each schema stands alone for any validator, with no cross-file references to resolve).
#[test]
fn shared_definitions_do_not_drift_apart() {
    let read = |name: &str| -> Value {
        let path = format!("{}/schemas/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let review = read("review");
    for other in ["retraining", "completed", "dead-letter"] {
        let schema = read(other);
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{other}"
        );
        for (name, definition) in schema["$defs"].as_object().unwrap() {
            if let Some(original) = review["$defs"].get(name) {
                assert_eq!(definition, original, "$defs/{name} differs in {other}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever bytes a model or client sends, the record built from them fits the schema and
    /// gives the bytes back.
    #[test]
    fn any_body_makes_a_valid_review_record(
        body in prop::collection::vec(any::<u8>(), 0..300),
        content_type in prop::sample::select(vec![
            "application/json", "text/plain", "application/octet-stream", "image/png",
            "application/vnd.api+json; charset=utf-8",
        ]),
    ) {
        let record = record_with("p", content_type, &body);
        let value = serde_json::to_value(&record).unwrap();
        let errors = schema_errors(&schema("review"), &value);
        prop_assert!(errors.is_empty(), "{:?}", errors);
        let back = record.request.to_bytes().unwrap();
        if record.request.encoding == reviewloop::record::Encoding::Json {
            prop_assert_eq!(
                serde_json::from_slice::<Value>(&back).unwrap(),
                serde_json::from_slice::<Value>(&body).unwrap()
            );
        } else {
            prop_assert_eq!(back, body);
        }
    }
}
