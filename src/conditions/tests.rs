use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::confidence::tests::fixture;

fn parse_ok(conditions: &Value) -> Conditions {
    parse(conditions.to_string().as_bytes())
        .unwrap_or_else(|problems| panic!("{conditions}: {problems:?}"))
}

fn paths(text: &str) -> Vec<String> {
    parse(text.as_bytes())
        .expect_err("should be refused")
        .into_iter()
        .map(|p| p.path)
        .collect()
}

fn moderation(labels: &[(&str, f64)]) -> Value {
    let labels: Vec<Value> = labels
        .iter()
        .map(|(name, confidence)| {
            json!({"Confidence": confidence, "Name": name, "ParentName": "Explicit Nudity"})
        })
        .collect();
    json!({"ModerationLabels": labels, "ModerationModelVersion": "3.0"})
}

fn facts(response: &Value, sample_point: f64) -> Facts<'_> {
    Facts {
        confidence: None,
        response: Some(response),
        sample_point,
    }
}

fn reasons(fired: &[Fired]) -> Vec<Reason> {
    let mut reasons: Vec<Reason> = fired.iter().map(|f| f.reason).collect();
    reasons.sort();
    reasons.dedup();
    reasons
}

/// Sample points spread evenly over [0, 100): what fraction of records fire.
fn fired_fraction(conditions: &Conditions, response: &Value) -> (f64, Vec<Reason>) {
    let n = 10_000;
    let mut fired = 0;
    let mut all = Vec::new();
    for i in 0..n {
        let point = (i as f64 + 0.5) * 100.0 / n as f64;
        let f = conditions.evaluate(&facts(response, point));
        if !f.is_empty() {
            fired += 1;
            all.extend(reasons(&f));
        }
    }
    all.sort();
    all.dedup();
    (fired as f64 / n as f64, all)
}

/// A2I's Rekognition example 5, shipped as `config/conditions.example.json`: always review
/// `Graphic Male Nudity` below 60, and sample 5 % of it above 90.
fn example() -> Conditions {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/conditions.example.json"
    );
    parse(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a2i_rekognition_example_reviews_low_confidence_labels_always() {
    let (fraction, reasons) =
        fired_fraction(&example(), &moderation(&[("Graphic Male Nudity", 45.0)]));
    assert_eq!(fraction, 1.0);
    assert_eq!(reasons, [Reason::LowConfidence]);
}

#[test]
fn a2i_rekognition_example_samples_five_percent_of_confident_labels() {
    let (fraction, reasons) =
        fired_fraction(&example(), &moderation(&[("Graphic Male Nudity", 95.0)]));
    assert!((fraction - 0.05).abs() < 1e-9, "{fraction}");
    assert_eq!(reasons, [Reason::Sampled]);
    // The documented DetectModerationLabels response has the label at 99.2.
    let documented: Value =
        serde_json::from_slice(&fixture("rekognition-moderation.json")).unwrap();
    let (fraction, reasons) = fired_fraction(&example(), &documented);
    assert!((fraction - 0.05).abs() < 1e-9, "{fraction}");
    assert_eq!(reasons, [Reason::Sampled]);
}

#[test]
fn a2i_rekognition_example_leaves_the_middle_band_and_other_labels_alone() {
    for labels in [
        &[("Graphic Male Nudity", 75.0)][..],
        &[("Graphic Male Nudity", 60.0)][..],
        &[("Graphic Male Nudity", 90.0)][..],
        &[("Explicit Nudity", 30.0), ("Suggestive", 99.0)][..],
        &[][..],
    ] {
        let (fraction, _) = fired_fraction(&example(), &moderation(labels));
        assert_eq!(fraction, 0.0, "{labels:?}");
    }
    // Not a Rekognition response at all.
    let (fraction, _) = fired_fraction(&example(), &json!({"predictions": [0.1]}));
    assert_eq!(fraction, 0.0);
}

#[test]
fn fired_conditions_name_their_path_and_what_matched() {
    let fired = example().evaluate(&facts(&moderation(&[("Graphic Male Nudity", 45.5)]), 99.0));
    assert_eq!(fired.len(), 1);
    let d = &fired[0].description;
    assert!(
        d.starts_with("$.Conditions[0].Or[0] ModerationLabelConfidenceCheck"),
        "{d}"
    );
    assert!(
        d.contains("\"Graphic Male Nudity\" at 45.5") && d.contains("< 60"),
        "{d}"
    );
    let fired = example().evaluate(&facts(&moderation(&[("Graphic Male Nudity", 95.0)]), 1.0));
    let descriptions: Vec<&str> = fired.iter().map(|f| f.description.as_str()).collect();
    assert_eq!(fired.len(), 2, "{descriptions:?}");
    assert!(descriptions[0].starts_with("$.Conditions[0].Or[1].And[0] Sampling: 5%"));
    assert_eq!(fired[0].sampling, Some(5.0));
}

#[test]
fn every_condition_that_fired_is_listed() {
    // A2I's example 1: two label bands under an Or; both true.
    let conditions = parse_ok(&json!({"Conditions": [{"Or": [
        {"And": [
            {"ConditionType": "ModerationLabelConfidenceCheck", "ConditionParameters": {"ModerationLabelName": "Graphic Male Nudity", "ConfidenceLessThanEquals": 99}},
            {"ConditionType": "ModerationLabelConfidenceCheck", "ConditionParameters": {"ModerationLabelName": "Graphic Male Nudity", "ConfidenceGreaterThanEquals": 90}}]},
        {"And": [
            {"ConditionType": "ModerationLabelConfidenceCheck", "ConditionParameters": {"ModerationLabelName": "Graphic Female Nudity", "ConfidenceLessThanEquals": 99}},
            {"ConditionType": "ModerationLabelConfidenceCheck", "ConditionParameters": {"ModerationLabelName": "Graphic Female Nudity", "ConfidenceGreaterThanEquals": 80}}]}
    ]}]}));
    let both = moderation(&[
        ("Graphic Male Nudity", 95.0),
        ("Graphic Female Nudity", 85.0),
    ]);
    assert_eq!(conditions.evaluate(&facts(&both, 50.0)).len(), 4);
    let one = moderation(&[
        ("Graphic Male Nudity", 95.0),
        ("Graphic Female Nudity", 75.0),
    ]);
    assert_eq!(conditions.evaluate(&facts(&one, 50.0)).len(), 2);
    // The catch-all label name (A2I's example 2).
    let any = parse_ok(
        &json!({"Conditions": [{"ConditionType": "ModerationLabelConfidenceCheck",
        "ConditionParameters": {"ModerationLabelName": "*", "ConfidenceGreaterThanEquals": 75}}]}),
    );
    assert_eq!(any.evaluate(&facts(&one, 50.0)).len(), 1);
    assert!(
        any.evaluate(&facts(&moderation(&[("Suggestive", 70.0)]), 50.0))
            .is_empty()
    );
}

#[test]
fn generic_confidence_check_reads_the_extracted_confidence() {
    let band = parse_ok(&json!({"Conditions": [{"ConditionType": "ConfidenceCheck",
        "ConditionParameters": {"ConfidenceGreaterThanEquals": 0.5, "ConfidenceLessThan": 0.7}}]}));
    let with = |confidence: Option<f64>| {
        band.evaluate(&Facts {
            confidence,
            response: None,
            sample_point: 50.0,
        })
    };
    assert_eq!(reasons(&with(Some(0.6))), [Reason::LowConfidence]);
    assert!(with(Some(0.7)).is_empty());
    assert!(with(Some(0.49)).is_empty());
    // No confidence: never fires on confidence.
    assert!(with(None).is_empty());
    let equals = parse_ok(&json!({"Conditions": [{"ConditionType": "ConfidenceCheck",
        "ConditionParameters": {"ConfidenceEquals": 1}}]}));
    assert_eq!(
        equals
            .evaluate(&Facts {
                confidence: Some(1.0),
                response: None,
                sample_point: 0.0
            })
            .len(),
        1
    );
}

fn textract() -> Value {
    serde_json::from_slice(&fixture("textract-analyze-document.json")).unwrap()
}

#[test]
fn textract_form_key_checks_read_key_value_and_word_blocks() {
    let check = |params: Value| {
        let conditions = parse_ok(&json!({"Conditions": [{
            "ConditionType": "ImportantFormKeyConfidenceCheck", "ConditionParameters": params}]}));
        conditions.evaluate(&facts(&textract(), 50.0))
    };
    // "Employee Name:" pair: key-value blocks at 55.5; its words 99.1, 98.7, 71.2, 69.8.
    let fired = check(
        json!({"ImportantFormKey": "Employee Name", "ImportantFormKeyAliases": ["Name", "EmployeeName"],
        "KeyValueBlockConfidenceLessThan": 60}),
    );
    assert_eq!(reasons(&fired), [Reason::LowConfidence]);
    assert!(
        fired[0].description.contains("Employee Name"),
        "{}",
        fired[0].description
    );
    // A2I's example 1 also wants each word below 85: "Employee" is at 99.1.
    assert!(
        check(
            json!({"ImportantFormKey": "Employee Name", "KeyValueBlockConfidenceLessThan": 60,
        "WordBlockConfidenceLessThan": 85})
        )
        .is_empty()
    );
    // "Pay Date:" is confident throughout.
    assert!(check(json!({"ImportantFormKey": "Pay Date", "ImportantFormKeyAliases": ["PayDate", "DateOfPay", "pay-date"],
        "KeyValueBlockConfidenceLessThan": 65})).is_empty());
    assert_eq!(
        check(json!({"ImportantFormKey": "Pay Date", "WordBlockConfidenceGreaterThan": 90})).len(),
        1
    );
    // Any key.
    assert_eq!(
        check(json!({"ImportantFormKey": "*", "KeyValueBlockConfidenceLessThan": 60})).len(),
        1
    );
    // Keys match case-sensitively, as A2I's label names do.
    assert!(
        check(json!({"ImportantFormKey": "employee name", "KeyValueBlockConfidenceLessThan": 60}))
            .is_empty()
    );
}

#[test]
fn missing_form_key_fires_only_on_textract_documents_without_it() {
    let missing = |key: &str, response: &Value| {
        let conditions = parse_ok(
            &json!({"Conditions": [{"ConditionType": "MissingImportantFormKey",
            "ConditionParameters": {"ImportantFormKey": key, "ImportantFormKeyAliases": ["Mailing Address:"]}}]}),
        );
        !conditions.evaluate(&facts(response, 50.0)).is_empty()
    };
    assert!(missing("Mailing Address", &textract()));
    assert!(!missing("Pay Date", &textract()));
    assert!(!missing("Mailing Address", &json!({"predictions": [0.5]})));
}

#[test]
fn checks_anded_with_sampling_only_narrow_the_sample() {
    // A2I's Textract example 5: 5 % of confident "Pay Date" pairs.
    let conditions = parse_ok(&json!({"Conditions": [{"And": [
        {"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 5}},
        {"ConditionType": "ImportantFormKeyConfidenceCheck", "ConditionParameters": {
            "ImportantFormKey": "Pay Date", "KeyValueBlockConfidenceGreaterThan": 90}}]}]}));
    let (fraction, reasons) = fired_fraction(&conditions, &textract());
    assert!((fraction - 0.05).abs() < 1e-9, "{fraction}");
    assert_eq!(reasons, [Reason::Sampled]);
}

#[test]
fn every_documented_a2i_example_parses() {
    let examples = [
        json!({"Conditions": [{"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 5}}]}),
        json!({"Conditions": [{"Or": [
            {"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 5}},
            {"ConditionType": "ModerationLabelConfidenceCheck", "ConditionParameters": {"ModerationLabelName": "Graphic Male Nudity", "ConfidenceGreaterThan": 50}}]}]}),
        json!({"Conditions": [
            {"ConditionType": "ImportantFormKeyConfidenceCheck", "ConditionParameters": {"ImportantFormKey": "Employee Name", "ImportantFormKeyAliases": ["Name", "EmployeeName"], "KeyValueBlockConfidenceLessThan": 60, "WordBlockConfidenceLessThan": 85}},
            {"ConditionType": "ImportantFormKeyConfidenceCheck", "ConditionParameters": {"ImportantFormKey": "Gross Pay", "ImportantFormKeyAliases": ["GrossPay", "GrossAmount"], "KeyValueBlockConfidenceLessThan": 60, "WordBlockConfidenceLessThan": 85}}]}),
        json!({"Conditions": [{"Or": [
            {"ConditionType": "ImportantFormKeyConfidenceCheck", "ConditionParameters": {"ImportantFormKey": "Pay Date", "KeyValueBlockConfidenceLessThan": 60, "WordBlockConfidenceLessThan": 60}},
            {"And": [
                {"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 5}},
                {"ConditionType": "ImportantFormKeyConfidenceCheck", "ConditionParameters": {"ImportantFormKey": "Pay Date", "KeyValueBlockConfidenceLessThan": 90, "WordBlockConfidenceGreaterThan": 90}}]}]}]}),
        json!({"Conditions": [{"ConditionType": "MissingImportantFormKey", "ConditionParameters": {"ImportantFormKey": "Mailing Address", "ImportantFormKeyAliases": ["Mailing Address:"]}}]}),
        // As CreateFlowDefinition takes it: the conditions as a JSON string.
        json!({"HumanLoopActivationConditions": json!({"Conditions": [{"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 0.01}}]}).to_string()}),
    ];
    for example in &examples {
        parse_ok(example);
    }
    assert!(example().reads_response());
    assert_eq!(example().sampling_percentages(), [5.0]);
}

#[test]
fn malformed_files_are_refused_with_the_json_path_of_each_problem() {
    assert_eq!(
        paths(
            r#"{"Conditions": [
            {"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 5}},
            {"And": [
                {"ConditionType": "ModerationLabelConfidenceChek", "ConditionParameters": {}},
                {"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 500}}
            ]}
        ]}"#
        ),
        [
            "$.Conditions[1].And[0].ConditionType",
            "$.Conditions[1].And[1].ConditionParameters.RandomSamplingPercentage"
        ]
    );
    // And/Or combine at least two conditions (A2I's schema).
    assert_eq!(
        paths(
            r#"{"Conditions": [{"Or": [{"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 5}}]}]}"#
        ),
        ["$.Conditions[0].Or"]
    );
    // Generic checks are on 0–1; A2I's on 0–100.
    assert_eq!(
        paths(
            r#"{"Conditions": [{"ConditionType": "ConfidenceCheck", "ConditionParameters": {"ConfidenceLessThan": 60}}]}"#
        ),
        ["$.Conditions[0].ConditionParameters.ConfidenceLessThan"]
    );
    assert_eq!(
        paths(
            r#"{"Conditions": [{"ConditionType": "ModerationLabelConfidenceCheck", "ConditionParameters": {"ConfidenceLessThan": 60}}]}"#
        ),
        ["$.Conditions[0].ConditionParameters"]
    );
    assert_eq!(
        paths(
            r#"{"Conditions": [{"ConditionType": "ModerationLabelConfidenceCheck", "ConditionParameters": {"ModerationLabelName": "x", "ConfidenceLesThan": 60}}]}"#
        ),
        [
            "$.Conditions[0].ConditionParameters.ConfidenceLesThan",
            "$.Conditions[0].ConditionParameters"
        ]
    );
    assert_eq!(
        paths(r#"{"Conditions": [{"ConditionType": "Sampling", "Or": []}]}"#),
        ["$.Conditions[0]"]
    );
    // A bare condition (as one A2I doc example prints it) is not a conditions document.
    assert_eq!(
        paths(
            r#"{"ConditionType": "MissingImportantFormKey", "ConditionParameters": {"ImportantFormKey": "Name"}}"#
        ),
        ["$"]
    );
    let problems = parse(br#"{"ConditionType": "Sampling"}"#).unwrap_err();
    assert!(
        problems[0].message.contains("wrap it as"),
        "{}",
        problems[0]
    );
    assert_eq!(paths(r#"{"Conditions": []}"#), ["$.Conditions"]);
    assert_eq!(paths(r#"[]"#), ["$"]);
    let problems = parse(br#"{"Conditions": [}"#).unwrap_err();
    assert_eq!(problems[0].path, "$");
    assert!(
        problems[0].message.contains("line 1 column"),
        "{}",
        problems[0]
    );
    let problems = parse(br#"{"Conditions": [{"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": "5"}}]}"#).unwrap_err();
    assert_eq!(
        problems[0].to_string(),
        "$.Conditions[0].ConditionParameters.RandomSamplingPercentage: must be a number from 0.01 to 100, not \"5\""
    );
}

fn arbitrary_conditions() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        (-10.0f64..200.0).prop_map(Value::from),
        Just(Value::from(5)),
        Just(Value::from("60")),
        Just(Value::Null),
    ];
    let key = prop_oneof![
        Just("ConditionType"),
        Just("ConditionParameters"),
        Just("And"),
        Just("Or"),
        Just("RandomSamplingPercentage"),
        Just("ModerationLabelName"),
        Just("ConfidenceLessThan"),
        Just("ConfidenceGreaterThanEquals"),
        Just("ImportantFormKey"),
        Just("ImportantFormKeyAliases"),
        Just("KeyValueBlockConfidenceLessThan"),
        Just("WordBlockConfidenceGreaterThan"),
        Just("Conditions"),
    ]
    .prop_map(str::to_owned);
    let leaf = prop_oneof![
        number,
        prop_oneof![
            Just("Sampling"),
            Just("ConfidenceCheck"),
            Just("ModerationLabelConfidenceCheck"),
            Just("ImportantFormKeyConfidenceCheck"),
            Just("MissingImportantFormKey"),
            Just("*"),
            Just("Pay Date"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 5, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .prop_map(|conditions| json!({"Conditions": conditions}))
}

proptest! {
    #[test]
    fn the_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse(&bytes);
    }

    #[test]
    fn parsed_conditions_evaluate_without_panicking(
        document in arbitrary_conditions(),
        point in 0.0f64..100.0,
        confidence in prop::option::of(0.0f64..=1.0),
    ) {
        match parse(document.to_string().as_bytes()) {
            Ok(conditions) => {
                for response in [moderation(&[("Pay Date", 50.0)]), textract(), json!(null)] {
                    let fired = conditions.evaluate(&Facts { confidence, response: Some(&response), sample_point: point });
                    prop_assert!(fired.iter().all(|f| f.description.starts_with("$.Conditions[")));
                }
            }
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                prop_assert!(problems.iter().all(|p| p.path.starts_with('$')));
            }
        }
    }
}
