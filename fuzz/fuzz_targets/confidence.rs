//! Fuzzes the confidence extractor: any response bytes, under any content type and preset,
//! give a confidence in [0, 1] or none, and never a panic; where the typed reader answers
//! (`read_quick`), it answers as the generic path does.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reviewloop::confidence::Extractor;
use reviewloop::config::{Aggregate, ConfidenceConfig, Preset, Scale};

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

const CONTENT_TYPES: [Option<&str>; 5] = [
    None,
    Some("application/json"),
    Some("text/event-stream"),
    Some("text/csv"),
    Some("application/jsonlines"),
];

fuzz_target!(|body: &[u8]| {
    // The whole input is the body (so response fixtures seed the corpus as they are); its length
    // picks the content type and the JMESPath scale and aggregate.
    let selector = body.len();
    let content_type = CONTENT_TYPES[selector % CONTENT_TYPES.len()];
    let mut extractors: Vec<Extractor> = PRESETS.iter().map(|p| Extractor::preset(*p)).collect();
    let aggregate = [
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Mean,
        Aggregate::Margin,
        Aggregate::Entropy,
    ][selector / 5 % 5];
    let scale = [Scale::Unit, Scale::Percent, Scale::Logprob][selector / 25 % 3];
    for expression in ["predictions[*].score", "@", "outputs[*].data"] {
        extractors.push(
            Extractor::new(&ConfidenceConfig {
                preset: Preset::Jmespath,
                expression: Some(expression.into()),
                scale,
                aggregate,
            })
            .expect("valid expression"),
        );
    }
    for extractor in &extractors {
        let c = extractor.extract(content_type, body);
        if let Some(c) = c {
            assert!((0.0..=1.0).contains(&c), "{extractor:?} gave {c}");
        }
        if let Some(quick) = extractor.read_quick(content_type, body) {
            assert_eq!(quick, c, "{extractor:?}: the typed reader disagrees");
        }
    }
});
