//! Fuzzes the A2I conditions parser: any bytes are parsed or refused with JSON-path problems,
//! and whatever parses evaluates on Rekognition/Textract-shaped responses without panicking.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reviewloop::conditions::{Facts, parse};
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(conditions) => {
            let responses = [
                json!({"ModerationLabels": [{"Name": "Graphic Male Nudity", "Confidence": 55.0}]}),
                json!({"Blocks": [
                    {"BlockType": "KEY_VALUE_SET", "Id": "k", "Confidence": 50.0, "EntityTypes": ["KEY"],
                     "Relationships": [{"Type": "CHILD", "Ids": ["w"]}, {"Type": "VALUE", "Ids": ["k"]}]},
                    {"BlockType": "WORD", "Id": "w", "Text": "Name:", "Confidence": 80.0}]}),
                json!(null),
            ];
            for response in &responses {
                for (confidence, sample_point) in [(None, 0.0), (Some(0.5), 50.0), (Some(1.0), 99.99)] {
                    let facts = Facts {
                        confidence,
                        response: Some(response),
                        sample_point,
                    };
                    let _ = conditions.evaluate(&facts);
                }
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            assert!(problems.iter().all(|p| p.path.starts_with('$')));
        }
    }
});
