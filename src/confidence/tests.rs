use proptest::prelude::*;
use serde_json::json;

use super::*;
use super::{Aggregate, Scale};

const PRESETS: [Preset; 10] = [
    Preset::Auto,
    Preset::Huggingface,
    Preset::Sagemaker,
    Preset::Tfserving,
    Preset::KserveV1,
    Preset::KserveV2,
    Preset::Openai,
    Preset::Rekognition,
    Preset::Textract,
    Preset::Comprehend,
];

pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/responses/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn exp_mean(logprobs: &[f64]) -> f64 {
    (logprobs.iter().sum::<f64>() / logprobs.len() as f64).exp()
}

const CHAT_LOGPROBS: [f64; 9] = [
    -0.31725305,
    -0.02380986,
    -0.000054669687,
    -0.015801601,
    -3.1281633e-7,
    -0.0073043797,
    -4.3202e-7,
    -0.0009636164,
    -0.000052643,
];

/// Each server's documented response shape, the preset for it, and the confidence it means.
fn fixtures() -> Vec<(&'static str, &'static str, Preset, Option<f64>)> {
    use Preset::*;
    let json = "application/json";
    vec![
        // Hugging Face pipelines / Inference Endpoints / TGI
        (
            "huggingface-text-classification.json",
            json,
            Huggingface,
            Some(0.9998704195022583),
        ),
        // Two inputs with all labels' scores: each input's top score, the weakest input wins.
        (
            "huggingface-text-classification-batch.json",
            json,
            Huggingface,
            Some(0.62),
        ),
        (
            "huggingface-zero-shot.json",
            json,
            Huggingface,
            Some(0.8778),
        ),
        // Every entity is a prediction: the least sure one.
        (
            "huggingface-token-classification.json",
            json,
            Huggingface,
            Some(0.9961),
        ),
        // The special end-of-sequence token does not count.
        (
            "huggingface-tgi-generate.json",
            json,
            Huggingface,
            Some((-0.105f64).exp()),
        ),
        // SageMaker built-in algorithms
        (
            "sagemaker-linear-learner-binary.json",
            json,
            Sagemaker,
            Some(0.6),
        ),
        (
            "sagemaker-linear-learner-multiclass.json",
            json,
            Sagemaker,
            Some(0.4),
        ),
        // A regressor's score is no probability.
        (
            "sagemaker-linear-learner-regression.json",
            json,
            Sagemaker,
            None,
        ),
        (
            "sagemaker-linear-learner.jsonl",
            "application/jsonlines",
            Sagemaker,
            Some(0.6),
        ),
        ("sagemaker-xgboost.csv", "text/csv", Sagemaker, Some(0.6)),
        (
            "sagemaker-xgboost-softprob.csv",
            "text/csv",
            Sagemaker,
            Some(0.5),
        ),
        (
            "sagemaker-xgboost-selectable.csv",
            "text/csv",
            Sagemaker,
            Some(0.6),
        ),
        (
            "sagemaker-xgboost-probabilities.json",
            json,
            Sagemaker,
            Some(0.6),
        ),
        (
            "sagemaker-image-classification.json",
            json,
            Sagemaker,
            Some(0.9611),
        ),
        ("sagemaker-blazingtext.json", json, Sagemaker, Some(0.8876)),
        // TF Serving REST
        ("tfserving-predict.json", json, Tfserving, Some(0.7)),
        // TF Serving's own example model predicts numbers, not probabilities.
        ("tfserving-half-plus-three.json", json, Tfserving, None),
        ("tfserving-classify.json", json, Tfserving, Some(0.65)),
        // KServe v1
        ("kserve-v1-predict.json", json, KserveV1, Some(0.7)),
        // sklearn `predict` answers class labels.
        ("kserve-v1-sklearn-labels.json", json, KserveV1, None),
        // KServe v2 / Open Inference Protocol: the probability output, per row of its shape.
        ("kserve-v2-infer.json", json, KserveV2, Some(0.34)),
        // shape [3, 1]: a binary probability per row, max(p, 1 − p): 0.93, 0.88, 0.55.
        ("kserve-v2-binary.json", json, KserveV2, Some(0.55)),
        // The protocol's own example tensor holds no probabilities.
        ("kserve-v2-spec-example.json", json, KserveV2, None),
        // OpenAI-compatible: exp(mean token logprob), streamed or not.
        (
            "openai-chat.json",
            json,
            Openai,
            Some(exp_mean(&CHAT_LOGPROBS)),
        ),
        (
            "openai-chat-stream.sse",
            "text/event-stream",
            Openai,
            Some(exp_mean(&CHAT_LOGPROBS)),
        ),
        (
            "openai-completions.json",
            json,
            Openai,
            Some(exp_mean(&[
                -0.0106, -0.0003, -0.2119, -0.0215, -1.5832, -0.0047, -0.0016,
            ])),
        ),
        // AWS AI services
        (
            "rekognition-moderation.json",
            "application/x-amz-json-1.1",
            Rekognition,
            Some(0.8825341796875),
        ),
        (
            "textract-analyze-document.json",
            "application/x-amz-json-1.1",
            Textract,
            Some(0.555),
        ),
        (
            "comprehend-sentiment.json",
            "application/x-amz-json-1.1",
            Comprehend,
            Some(0.9976972341537476),
        ),
        (
            "comprehend-batch-sentiment.json",
            "application/x-amz-json-1.1",
            Comprehend,
            Some(0.45),
        ),
        (
            "comprehend-entities.json",
            "application/x-amz-json-1.1",
            Comprehend,
            Some(0.8472),
        ),
    ]
}

fn assert_close(name: &str, what: &str, got: Option<f64>, want: Option<f64>) {
    match (got, want) {
        (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{name} ({what}): got {g}, want {w}"),
        (None, None) => {}
        _ => panic!("{name} ({what}): got {got:?}, want {want:?}"),
    }
}

#[test]
fn each_preset_reads_its_servers_documented_responses() {
    for (name, content_type, preset, want) in fixtures() {
        let body = fixture(name);
        let got = Extractor::preset(preset).extract(Some(content_type), &body);
        assert_close(name, &format!("{preset:?}"), got, want);
    }
}

#[test]
fn auto_reads_the_same_value_as_the_preset() {
    for (name, content_type, preset, want) in fixtures() {
        let body = fixture(name);
        let got = Extractor::preset(Preset::Auto).extract(Some(content_type), &body);
        assert_close(name, "auto", got, want);
        if want.is_some() {
            let detected = detect(&Document::parse(Some(content_type), &body));
            // Tfserving and KServe v1 share one shape; either reads it.
            let same = detected == Some(preset)
                || (preset == Preset::KserveV1 && detected == Some(Preset::Tfserving));
            assert!(same, "{name}: auto detected {detected:?}, not {preset:?}");
        }
    }
}

#[test]
fn auto_does_not_need_the_content_type() {
    for (name, _, _, want) in fixtures() {
        let got = Extractor::preset(Preset::Auto).extract(None, &fixture(name));
        assert_close(name, "auto without content type", got, want);
    }
}

#[test]
fn a_preset_reads_nothing_from_another_servers_shape() {
    let body = fixture("openai-chat.json");
    for preset in [
        Preset::Huggingface,
        Preset::KserveV2,
        Preset::Rekognition,
        Preset::Textract,
    ] {
        assert_eq!(
            Extractor::preset(preset).extract(None, &body),
            None,
            "{preset:?}"
        );
    }
}

fn auto(body: serde_json::Value) -> Option<f64> {
    Extractor::preset(Preset::Auto).extract(Some("application/json"), body.to_string().as_bytes())
}

#[test]
fn a_binary_probability_counts_as_the_likelier_side() {
    assert_eq!(auto(json!({"predictions": [0.2]})), Some(0.8));
    assert_eq!(auto(json!({"predictions": [[0.2]]})), Some(0.8));
    assert_eq!(auto(json!({"predictions": [0.9, 0.3]})), Some(0.7));
}

#[test]
fn a_batch_is_as_confident_as_its_weakest_instance() {
    assert_eq!(
        auto(json!({"predictions": [[0.1, 0.9], [0.6, 0.4], [0.95, 0.05]]})),
        Some(0.6)
    );
    // Several inputs' top labels (one label repeated): each item is an instance.
    assert_eq!(
        auto(json!([{"label": "POSITIVE", "score": 0.98}, {"label": "POSITIVE", "score": 0.51}])),
        Some(0.51)
    );
}

#[test]
fn a_single_json_lines_record_is_one_prediction() {
    let body = b"{\"score\": 0.4, \"predicted_label\": 0}\n";
    for preset in [Preset::Sagemaker, Preset::Auto] {
        let got = Extractor::preset(preset).extract(Some("application/jsonlines"), body);
        assert_eq!(got, Some(0.6), "{preset:?}");
    }
}

#[test]
fn unreadable_bodies_have_no_confidence() {
    let extractor = Extractor::preset(Preset::Auto);
    for body in [
        &b""[..],
        b"\xff\xfe\x00binary",
        b"{\"predictions\": [[0.1, 0.9]",
        b"<html>Bad gateway</html>",
        b"{\"predictions\": [[-2.3, 4.1]]}",
        b"{\"predictions\": [[0.5, NaN]]}",
        b"{}",
        b"[]",
        b"null",
    ] {
        assert_eq!(
            extractor.extract(Some("application/json"), body),
            None,
            "{body:?}"
        );
    }
}

#[test]
fn streamed_events_accumulate_per_choice_until_done() {
    let chunk = |index: u64, logprob: f64| {
        json!({"choices": [{"index": index, "delta": {"content": "x"},
            "logprobs": {"content": [{"token": "x", "logprob": logprob}]}}]})
    };
    let mut body = String::new();
    for (index, logprob) in [(0, -0.1), (1, -1.0), (0, -0.3), (1, -2.0)] {
        body.push_str(&format!("data: {}\r\n\r\n", chunk(index, logprob)));
    }
    body.push_str("data: [DONE]\r\n\r\n");
    body.push_str(&format!("data: {}\n\n", chunk(0, -50.0))); // after [DONE]: ignored
    let got = Extractor::preset(Preset::Openai).extract(Some("text/event-stream"), body.as_bytes());
    // Choice 0: exp(-0.2); choice 1: exp(-1.5); the weaker choice.
    assert_close("sse", "openai", got, Some((-1.5f64).exp()));
    // Without a content type, the `data:` prefix is recognised.
    let got = Extractor::preset(Preset::Auto).extract(None, body.as_bytes());
    assert_close("sse", "auto", got, Some((-1.5f64).exp()));
}

#[test]
fn a_stream_cut_short_still_reads_what_arrived() {
    let body = fixture("openai-chat-stream.sse");
    let cut = &body[..body.len() / 2];
    let got = Extractor::preset(Preset::Openai).extract(Some("text/event-stream"), cut);
    assert!(got.is_some_and(|c| (0.0..=1.0).contains(&c)), "{got:?}");
}

fn jmes(expression: &str, scale: Scale, aggregate: Aggregate) -> Extractor {
    Extractor::new(&ConfidenceConfig {
        preset: Preset::Jmespath,
        expression: Some(expression.into()),
        scale,
        aggregate,
    })
    .unwrap()
}

#[test]
fn jmespath_scales_and_aggregates() {
    let body = json!({
        "predictions": [{"probs": [0.7, 0.2, 0.1]}, {"probs": [0.4, 0.35, 0.25]}],
        "percent": [97.0, 62.5],
        "tokens": [{"lp": -0.1}, {"lp": -0.3}],
    })
    .to_string();
    let read = |e: &Extractor| e.extract(Some("application/json"), body.as_bytes());
    let close = |got: Option<f64>, want: f64| {
        assert!(
            got.is_some_and(|g| (g - want).abs() < 1e-9),
            "{got:?} != {want}"
        )
    };
    // A list of lists: one instance each, the weakest counts.
    close(
        read(&jmes("predictions[*].probs", Scale::Unit, Aggregate::Max)),
        0.4,
    );
    close(
        read(&jmes(
            "predictions[*].probs",
            Scale::Unit,
            Aggregate::Margin,
        )),
        0.05,
    );
    close(
        read(&jmes("predictions[0].probs", Scale::Unit, Aggregate::Mean)),
        1.0 / 3.0,
    );
    let entropy = read(&jmes(
        "predictions[0].probs",
        Scale::Unit,
        Aggregate::Entropy,
    ))
    .unwrap();
    let h: f64 = [0.7f64, 0.2, 0.1].iter().map(|p| -p * p.ln()).sum();
    close(Some(entropy), 1.0 - h / 3f64.ln());
    close(
        read(&jmes("percent", Scale::Percent, Aggregate::Min)),
        0.625,
    );
    close(
        read(&jmes("tokens[*].lp", Scale::Logprob, Aggregate::Mean)),
        (-0.2f64).exp(),
    );
    close(
        read(&jmes("tokens[0].lp", Scale::Logprob, Aggregate::Min)),
        (-0.1f64).exp(),
    );
    // A single probability for margin/entropy is a binary one.
    close(
        read(&jmes(
            "predictions[0].probs[0]",
            Scale::Unit,
            Aggregate::Margin,
        )),
        0.4,
    );
    // Out of range for its scale, or nothing found: no confidence.
    assert_eq!(read(&jmes("percent", Scale::Unit, Aggregate::Min)), None);
    assert_eq!(read(&jmes("missing", Scale::Unit, Aggregate::Min)), None);
}

#[test]
fn jmespath_needs_a_valid_expression() {
    let config = |expression: Option<&str>| ConfidenceConfig {
        preset: Preset::Jmespath,
        expression: expression.map(str::to_owned),
        ..ConfidenceConfig::default()
    };
    assert!(Extractor::new(&config(None)).is_err());
    let err = Extractor::new(&config(Some("predictions[*"))).unwrap_err();
    assert!(err.to_string().contains("not a valid JMESPath"), "{err}");
}

fn arbitrary_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from), // NaN/inf become null
        (-2.0f64..2.0).prop_map(serde_json::Value::from),
        (-1.0e4f64..0.0).prop_map(serde_json::Value::from),
        "[a-zA-Z_]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("predictions".to_string()),
            Just("prediction".to_string()),
            Just("outputs".to_string()),
            Just("data".to_string()),
            Just("shape".to_string()),
            Just("choices".to_string()),
            Just("logprobs".to_string()),
            Just("content".to_string()),
            Just("logprob".to_string()),
            Just("score".to_string()),
            Just("scores".to_string()),
            Just("labels".to_string()),
            Just("label".to_string()),
            Just("probabilities".to_string()),
            Just("ModerationLabels".to_string()),
            Just("Confidence".to_string()),
            Just("Blocks".to_string()),
            Just("SentimentScore".to_string()),
            Just("ResultList".to_string()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys, inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn all_extractors() -> Vec<Extractor> {
    let mut extractors: Vec<Extractor> = PRESETS.iter().map(|p| Extractor::preset(*p)).collect();
    for aggregate in [
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Mean,
        Aggregate::Margin,
        Aggregate::Entropy,
    ] {
        for scale in [Scale::Unit, Scale::Percent, Scale::Logprob] {
            extractors.push(jmes("predictions", scale, aggregate));
        }
    }
    extractors
}

fn in_range(c: Option<f64>) -> bool {
    c.is_none_or(|c| (0.0..=1.0).contains(&c))
}

proptest! {
    #[test]
    fn confidence_is_in_unit_range_or_none_for_any_json(value in arbitrary_json()) {
        let body = value.to_string();
        for extractor in all_extractors() {
            for content_type in [Some("application/json"), Some("text/csv"), None] {
                let c = extractor.extract(content_type, body.as_bytes());
                prop_assert!(in_range(c), "{:?} on {} gave {:?}", extractor, body, c);
            }
        }
    }

    #[test]
    fn confidence_is_in_unit_range_or_none_for_any_bytes(
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        for extractor in all_extractors() {
            for content_type in [Some("application/json"), Some("text/event-stream"), Some("text/csv"), None] {
                let c = extractor.extract(content_type, &body);
                prop_assert!(in_range(c), "{:?} gave {:?}", extractor, c);
            }
        }
    }

    #[test]
    fn confidence_is_in_unit_range_or_none_for_text_shapes(
        text in "(data: ?)?[\\[\\]{}\",0-9.eE:\\-\\r\\n ]{0,200}",
    ) {
        for extractor in all_extractors() {
            for content_type in [Some("text/csv"), Some("text/event-stream"), None] {
                let c = extractor.extract(content_type, text.as_bytes());
                prop_assert!(in_range(c), "{:?} on {:?} gave {:?}", extractor, text, c);
            }
        }
    }
}

/// Label/score lists as servers write them, and near misses the typed reader must leave to
/// the generic path: other keys, non-string labels, string scores, duplicates, out of range.
fn label_score_body() -> impl Strategy<Value = String> {
    let item = (
        prop_oneof![
            "[a-c]".prop_map(|l| json!(l)),
            Just(json!("caf\u{e9} \"q\"")),
            Just(json!(1))
        ],
        prop_oneof![
            (0.0f64..1.0).prop_map(|s| json!(s)),
            (-1.0f64..3.0).prop_map(|s| json!(s)),
            Just(json!(1)),
            Just(json!("0.5")),
        ],
        prop::option::weighted(0.05, Just(("entity", json!("B-PER")))),
    )
        .prop_map(|(label, score, extra)| {
            let mut item = json!({"label": label, "score": score});
            if let Some((key, value)) = extra {
                item[key] = value;
            }
            item
        });
    let list = prop::collection::vec(item, 0..5);
    prop_oneof![
        list.clone().prop_map(|l| json!(l)),
        prop::collection::vec(list, 0..4).prop_map(|b| json!(b)),
    ]
    .prop_map(|v| format!(" {v}\n"))
}

#[test]
fn text_classification_is_read_without_a_document() {
    for name in [
        "huggingface-text-classification.json",
        "huggingface-text-classification-batch.json",
    ] {
        let body = fixture(name);
        for preset in [Preset::Auto, Preset::Huggingface] {
            let extractor = Extractor::preset(preset);
            let quick = extractor.read_quick(Some("application/json"), &body);
            assert!(quick.is_some(), "{name}: not read quickly");
            assert_eq!(
                quick.unwrap(),
                extractor.extract(Some("application/json"), &body)
            );
        }
        // Other presets, CSV and SSE content types always take the generic path.
        let sagemaker = Extractor::preset(Preset::Sagemaker);
        assert_eq!(sagemaker.read_quick(Some("application/json"), &body), None);
        let auto = Extractor::preset(Preset::Auto);
        assert_eq!(auto.read_quick(Some("text/csv"), &body), None);
        assert_eq!(auto.read_quick(Some("Text/Event-Stream"), &body), None);
    }
    // Another shape is left to the generic path.
    let token = fixture("huggingface-token-classification.json");
    assert_eq!(
        Extractor::preset(Preset::Auto).read_quick(None, &token),
        None
    );
}

proptest! {
    /// Wherever the typed reader answers, it answers as the generic path does.
    #[test]
    fn the_typed_reader_agrees_with_the_document(body in label_score_body()) {
        for preset in [Preset::Auto, Preset::Huggingface] {
            let extractor = Extractor::preset(preset);
            for content_type in [Some("application/json"), Some("text/plain"), None] {
                if let Some(quick) = extractor.read_quick(content_type, body.as_bytes()) {
                    let full = extractor.extract(content_type, body.as_bytes());
                    prop_assert_eq!(quick, full, "{:?} on {}", preset, body);
                }
            }
        }
    }
}
