use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::config::Config;
use crate::route::RouteTable;

/// The routes of a configuration, deciding as the proxy does: by the policy of the route a
/// path resolves to.
struct Decider(Arc<RouteTable>);

impl Decider {
    /// The decision on an unconfigured path: the top-level settings.
    fn decide(&self, input: &DecisionInput<'_>, now: Instant) -> Decision {
        self.on("/invocations", input, now)
    }

    fn on(&self, path: &str, input: &DecisionInput<'_>, now: Instant) -> Decision {
        self.0.resolve(path).policy().decide(input, now)
    }
}

fn decider(toml: &str) -> Decider {
    let checked = Config::from_toml_with_env(toml, "test.toml", Vec::new()).unwrap();
    Decider(checked.routes)
}

fn conditions_file(json: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    file.write_all(json.as_bytes()).unwrap();
    file
}

fn toml_path(file: &tempfile::NamedTempFile) -> String {
    format!("{:?}", file.path().display().to_string())
}

const LOW: &str = r#"{"predictions": [[0.55, 0.45]]}"#;
const HIGH: &str = r#"{"predictions": [[0.98, 0.02]]}"#;
const NONE: &str = r#"{"message": "no probabilities here"}"#;

fn input<'a>(id: &'a str, body: &'a str) -> DecisionInput<'a> {
    DecisionInput {
        id,
        request_body: b"{\"inputs\": \"hello\"}",
        response_content_type: Some("application/json"),
        response_body: body.as_bytes(),
        force: None,
    }
}

fn forced(force: Force, body: &str) -> DecisionInput<'_> {
    DecisionInput {
        force: Some(force),
        ..input("id-1", body)
    }
}

#[test]
fn a_policy_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
}

#[test]
fn low_confidence_is_diverted_and_confident_responses_are_not() {
    let d = decider("[review]\nconfidence_below = 0.7\nsample_percent = 0\n");
    let now = Instant::now();
    let low = d.decide(&input("a", LOW), now);
    assert_eq!(low.confidence, Some(0.55));
    assert_eq!(low.reasons, [Reason::LowConfidence]);
    assert_eq!(low.conditions, ["confidence 0.5500 < confidence_below 0.7"]);
    assert!(low.diverted());
    let high = d.decide(&input("a", HIGH), now);
    assert_eq!(high.confidence, Some(0.98));
    assert!(high.reasons.is_empty() && !high.diverted());
}

#[test]
fn no_confidence_is_never_diverted_on_confidence_but_still_sampled_and_forced() {
    let d = decider("[review]\nconfidence_below = 1.0\nsample_percent = 0\n");
    let now = Instant::now();
    let decision = d.decide(&input("a", NONE), now);
    assert_eq!(decision.confidence, None);
    assert!(!decision.diverted());
    let d = decider("[review]\nconfidence_below = 1.0\nsample_percent = 100\n");
    assert_eq!(d.decide(&input("a", NONE), now).reasons, [Reason::Sampled]);
    assert_eq!(
        d.decide(&forced(Force::Always, NONE), now).reasons,
        [Reason::Sampled, Reason::Forced]
    );
}

#[test]
fn force_always_adds_forced_to_whatever_else_fired() {
    let d = decider("[review]\nsample_percent = 0\nforce_header = \"x-review\"\n");
    let now = Instant::now();
    let decision = d.decide(&forced(Force::Always, HIGH), now);
    assert_eq!(decision.reasons, [Reason::Forced]);
    assert_eq!(decision.conditions, ["x-review: always"]);
    let decision = d.decide(&forced(Force::Always, LOW), now);
    assert_eq!(decision.reasons, [Reason::LowConfidence, Reason::Forced]);
    assert!(decision.diverted());
}

#[test]
fn force_never_diverts_nothing() {
    let d = decider("[review]\nsample_percent = 100\n");
    let decision = d.decide(&forced(Force::Never, LOW), Instant::now());
    assert_eq!(
        decision.confidence,
        Some(0.55),
        "still read, for the metrics"
    );
    assert!(decision.reasons.is_empty() && decision.conditions.is_empty());
    assert!(!decision.diverted() && !decision.over_budget);
}

#[test]
fn the_budget_caps_a_burst_and_refills_at_its_rate() {
    // 2 reviews per second: a burst of 20 (10 seconds' worth) is let through at once.
    let d = decider("[review]\nsample_percent = 0\nbudget_per_second = 2\n");
    let start = Instant::now();
    let burst: Vec<Decision> = (0..25)
        .map(|i| d.decide(&input(&format!("id-{i}"), LOW), start))
        .collect();
    assert_eq!(burst.iter().filter(|d| d.diverted()).count(), 20);
    let refused: Vec<&Decision> = burst.iter().filter(|d| d.over_budget).collect();
    assert_eq!(refused.len(), 5);
    // Refused records keep their reasons, so the pipeline can count what was skipped.
    assert!(refused.iter().all(|d| d.reasons == [Reason::LowConfidence]));
    // Confident responses never touch the budget.
    assert!(!d.decide(&input("calm", HIGH), start).over_budget);
    // Forcing bypasses the exhausted budget.
    let forced = d.decide(&forced(Force::Always, LOW), start);
    assert!(forced.diverted() && !forced.over_budget);
    // 1.5 s later: 3 tokens.
    let later = start + Duration::from_millis(1500);
    let after: Vec<bool> = (0..5)
        .map(|i| {
            d.decide(&input(&format!("later-{i}"), LOW), later)
                .diverted()
        })
        .collect();
    assert_eq!(after, [true, true, true, false, false]);
    // A long quiet spell saves up no more than the burst.
    let much_later = later + Duration::from_secs(3600);
    let saved = (0..40)
        .filter(|i| {
            d.decide(&input(&format!("q-{i}"), LOW), much_later)
                .diverted()
        })
        .count();
    assert_eq!(saved, 20);
}

#[test]
fn budget_zero_is_unlimited() {
    let d = decider("[review]\nsample_percent = 0\nbudget_per_second = 0\n");
    let now = Instant::now();
    assert!((0..1000).all(|i| d.decide(&input(&format!("{i}"), LOW), now).diverted()));
}

#[test]
fn a_tiny_budget_still_lets_one_review_through() {
    let mut bucket = TokenBucket::new(0.01);
    let now = Instant::now();
    assert_eq!(bucket.capacity(), 1.0);
    assert!(bucket.try_take(now));
    assert!(!bucket.try_take(now + Duration::from_secs(50)));
    assert!(bucket.try_take(now + Duration::from_secs(100)));
    // An instant from before the last one (another thread's) does not go back in time.
    assert!(!bucket.try_take(now));
}

#[test]
fn routes_use_their_own_settings_and_unknown_routes_the_default() {
    let d = decider(
        r#"
        [review]
        confidence_below = 0.5
        sample_percent = 0
        [[routes]]
        name = "strict"
        path = "/strict"
        review = { confidence_below = 0.9 }
        "#,
    );
    let now = Instant::now();
    let on = |path: &str| d.on(path, &input("a", LOW), now);
    assert!(!on("/invocations").diverted());
    assert_eq!(on("/strict/x").reasons, [Reason::LowConfidence]);
    assert_eq!(
        on("/strict").sample_percent,
        0.0,
        "inherited from the top level"
    );
    assert!(!on("/elsewhere").diverted());
}

#[test]
fn a_route_can_read_confidence_its_own_way() {
    let d = decider(
        r#"
        [review]
        confidence_below = 0.7
        sample_percent = 0
        [[routes]]
        name = "custom"
        path = "/custom"
        confidence = { preset = "jmespath", expression = "result.certainty", scale = "percent" }
        "#,
    );
    let body = r#"{"result": {"label": "cat", "certainty": 42.0}}"#;
    let decision = d.on("/custom", &input("a", body), Instant::now());
    assert_eq!(decision.confidence, Some(0.42));
    assert_eq!(decision.reasons, [Reason::LowConfidence]);
    assert_eq!(d.decide(&input("a", body), Instant::now()).confidence, None);
}

#[test]
fn the_a2i_example_conditions_file_decides_as_documented() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/conditions.example.json"
    );
    let d = decider(&format!("[review]\nconditions_file = {path:?}\n"));
    let now = Instant::now();
    let labels = |confidence: f64| {
        format!(
            r#"{{"ModerationLabels": [{{"Confidence": {confidence}, "Name": "Graphic Male Nudity", "ParentName": "Explicit Nudity"}}], "ModerationModelVersion": "3.0"}}"#
        )
    };
    let low = labels(45.0);
    let decision = d.decide(&input("a", &low), now);
    assert_eq!(decision.reasons, [Reason::LowConfidence]);
    assert_eq!(decision.confidence, Some(0.45));
    assert!(decision.conditions[0].contains("ModerationLabelConfidenceCheck"));
    let high = labels(95.0);
    let decisions: Vec<Decision> = (0..20_000)
        .map(|i| d.decide(&input(&format!("img-{i}"), &high), now))
        .collect();
    let sampled = decisions.iter().filter(|d| d.diverted()).count() as f64 / 20_000.0;
    assert!((sampled - 0.05).abs() < 0.005, "{sampled}");
    let one = decisions.iter().find(|d| d.diverted()).unwrap();
    assert_eq!(one.reasons, [Reason::Sampled]);
    assert_eq!(one.sample_percent, 5.0);
    assert_eq!(
        one.conditions.len(),
        2,
        "the Sampling and the check it narrows"
    );
    let middle = labels(75.0);
    assert!(!d.decide(&input("a", &middle), now).diverted());
}

#[test]
fn sampling_by_input_gives_the_same_decision_for_the_same_request() {
    let d = decider("[review]\nsample_percent = 50\nsample_by = \"input\"\n");
    let now = Instant::now();
    let decide = |id: &str, request: &str| {
        d.decide(
            &DecisionInput {
                request_body: request.as_bytes(),
                ..input(id, HIGH)
            },
            now,
        )
        .diverted()
    };
    for request in ["a", "b", "c", "d", "e", "f"] {
        let first = decide("id-1", request);
        assert!((0..20).all(|i| decide(&format!("other-{i}"), request) == first));
    }
    let sampled = (0..1000)
        .filter(|i| decide("x", &format!("req-{i}")))
        .count();
    assert!((400..600).contains(&sampled), "{sampled}");
}

#[test]
fn sampling_points_are_pinned_across_processes_and_releases() {
    // xxh3 with a fixed seed is specified and portable: these values must never change, or a
    // restarted proxy (or one on another machine) would sample different records.
    let points: Vec<String> = ["", "a", "0192a6c1-7a4e-7cc3-9e0f-53c7b5a4b1d2"]
        .iter()
        .map(|k| format!("{:.6}", sample_point(k.as_bytes())))
        .collect();
    assert_eq!(points, PINNED_POINTS);
}

/// Cross-checked with the reference xxHash library (python-xxhash's `xxh3_64_intdigest` with the
/// same seed), so any xxh3 implementation agrees with these records' sampling.
const PINNED_POINTS: [&str; 3] = ["44.802931", "6.996509", "37.757470"];

#[test]
fn a_broken_conditions_file_is_refused_with_its_name_and_json_path() {
    let file = conditions_file(
        r#"{"Conditions": [{"Or": [
            {"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 5}},
            {"ConditionType": "ConfidenceCheck", "ConditionParameters": {"ConfidenceLessThan": 70}}
        ]}]}"#,
    );
    let review = ReviewConfig {
        conditions_file: Some(file.path().to_owned()),
        ..ReviewConfig::default()
    };
    let problems = Policy::new(&ConfidenceConfig::default(), &review).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let text = problems[0].to_string();
    assert!(text.starts_with("review.conditions_file = "), "{text}");
    assert!(text.contains(&file.path().display().to_string()), "{text}");
    assert!(
        text.contains("$.Conditions[0].Or[1].ConditionParameters.ConfidenceLessThan"),
        "{text}"
    );
}

#[test]
fn a_conditions_file_with_a_generic_check_works_on_any_model() {
    let file = conditions_file(
        r#"{"Conditions": [
            {"ConditionType": "ConfidenceCheck", "ConditionParameters": {"ConfidenceLessThan": 0.6}},
            {"ConditionType": "Sampling", "ConditionParameters": {"RandomSamplingPercentage": 100}}
        ]}"#,
    );
    let d = decider(&format!(
        "[review]\nconditions_file = {}\n",
        toml_path(&file)
    ));
    let decision = d.decide(&input("a", LOW), Instant::now());
    assert_eq!(decision.reasons, [Reason::LowConfidence, Reason::Sampled]);
    assert_eq!(decision.conditions.len(), 2);
    assert_eq!(decision.sample_percent, 100.0);
}

fn decide_sampled(d: &Decider, id: &str) -> bool {
    d.decide(&input(id, HIGH), Instant::now())
        .reasons
        .contains(&Reason::Sampled)
}

proptest! {
    #[test]
    fn the_same_id_gets_the_same_decision_in_every_process(
        ids in prop::collection::vec(".{0,40}", 1..50),
        percent in 0.0f64..=100.0,
    ) {
        let toml = format!("[review]\nsample_percent = {percent}\n");
        // Two deciders stand for two processes (or a restart): nothing is shared.
        let (one, two) = (decider(&toml), decider(&toml));
        for id in &ids {
            let first = decide_sampled(&one, id);
            prop_assert_eq!(first, decide_sampled(&two, id));
            prop_assert_eq!(first, decide_sampled(&one, id));
            prop_assert_eq!(first, sample_point(id.as_bytes()) < percent);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    fn the_sampled_fraction_converges_to_sample_percent(prefix in "[a-z0-9-]{0,12}", uuids in any::<bool>()) {
        let d = decider("[review]\nconfidence_below = 0\nsample_percent = 10\n");
        let keys: u64 = 100_000;
        let sampled = (0..keys)
            .filter(|&i| {
                let id = if uuids {
                    uuid::Uuid::from_u64_pair(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i).to_string()
                } else {
                    format!("{prefix}{i}")
                };
                decide_sampled(&d, &id)
            })
            .count();
        let fraction = sampled as f64 / keys as f64;
        prop_assert!((fraction - 0.10).abs() <= 0.01, "{} sampled of {}", sampled, keys);
    }

    #[test]
    fn decisions_never_panic_and_confidence_stays_in_range(
        body in prop::collection::vec(any::<u8>(), 0..300),
        force in prop::option::of(prop_oneof![Just(Force::Always), Just(Force::Never)]),
    ) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/conditions.example.json");
        for toml in [
            "[review]\nsample_percent = 50\nbudget_per_second = 1\n".to_owned(),
            format!("[review]\nconditions_file = {path:?}\n"),
        ] {
            let d = decider(&toml);
            let decision = d.decide(&DecisionInput { response_body: &body, force, ..input("k", "") }, Instant::now());
            prop_assert!(decision.confidence.is_none_or(|c| (0.0..=1.0).contains(&c)));
            prop_assert!(decision.reasons.windows(2).all(|w| w[0] < w[1]));
            if force == Some(Force::Never) {
                prop_assert!(!decision.diverted());
            }
            if force == Some(Force::Always) {
                prop_assert!(decision.diverted());
            }
        }
    }
}

#[test]
fn the_decision_says_whether_it_parsed_the_response_as_json() {
    let d = decider("[review]\nconfidence_below = 0.7\nsample_percent = 0\n");
    let now = Instant::now();
    let is_json = |content_type: Option<&'static str>, body: &'static str| {
        let input = DecisionInput {
            response_content_type: content_type,
            ..input("a", body)
        };
        d.decide(&input, now).response_is_json
    };
    let json = Some("application/json");
    // The typed reader (Hugging Face) and the generic tree both parse the whole body.
    assert!(is_json(json, r#" [{"label": "joy", "score": 0.4}] "#));
    assert!(is_json(json, LOW));
    assert!(is_json(json, NONE));
    // Not one JSON document: cut short, several lines, text, CSV, an event stream.
    assert!(!is_json(json, r#"[{"label": "joy", "score": 0.4}"#));
    assert!(!is_json(json, "{\"a\": 1}\n{\"a\": 2}\n"));
    assert!(!is_json(Some("text/plain"), "the model says 0.4"));
    assert!(!is_json(json, ""));
    assert!(!is_json(Some("text/csv"), "0.4\n"));
    assert!(!is_json(Some("text/event-stream"), "data: {\"token\": 1}\n\n"));
    assert!(!is_json(json, "1e400"));
}

/// False when the decision calls `body` JSON but `Value` refuses it.
fn called_json_only_if_value_parses(body: &str) -> bool {
    let d = decider("[review]\nconfidence_below = 0.7\nsample_percent = 0\n");
    !d.decide(&input("a", body), Instant::now()).response_is_json
        || serde_json::from_str::<serde_json::Value>(body).is_ok()
}

proptest! {
    /// Whatever body the typed reader or the tree accepts, `Value` accepts too: the review
    /// record embeds a body the decision parsed without checking it again, so a body that
    /// `Value` refuses must never be called JSON (out-of-range numbers, lone surrogates,
    /// duplicate or unknown keys, trailing garbage).
    #[test]
    fn a_body_called_json_is_json_by_values_rules(
        tokens in proptest::collection::vec(proptest::sample::select(vec![
            "[", "]", "{", "}", ",", ":", " ", "\"label\"", "\"score\"", "\"other\"", "\"joy\"",
            "\"\\ud800\"", "\"caf\\u00e9\"", "0.42", "1", "-0", "1e400", "1E-400",
            "12345678901234567890123", "null", "true", "x",
        ]), 0..28),
    ) {
        let body = tokens.concat();
        prop_assert!(called_json_only_if_value_parses(&body), "{}", body);
    }

    /// The same for bodies shaped as Hugging Face answers, the typed reader's own input.
    #[test]
    fn a_label_score_list_called_json_is_json_by_values_rules(
        label in proptest::sample::select(vec![
            "\"joy\"", "\"\\ud800\"", "\"\\ud83d\\ude00\"", "\"a\\\"b\"", "1", "null", "\"\\x\"",
        ]),
        score in proptest::sample::select(vec![
            "0.42", "1", "-0", "1e400", "-1e400", "1E-400", "12345678901234567890123", "\"0.4\"",
        ]),
        extra in proptest::sample::select(vec!["", ", \"label\": \"x\"", ", \"other\": 1", " x"]),
        batch in proptest::bool::ANY,
    ) {
        let one = format!("[{{\"label\": {label}, \"score\": {score}{extra}}}]");
        let body = if batch { format!("[{one}]") } else { one };
        prop_assert!(called_json_only_if_value_parses(&body), "{}", body);
    }
}
