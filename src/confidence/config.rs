//! `[confidence]`: which reader turns a response into one confidence.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    Auto,
    Huggingface,
    Sagemaker,
    Tfserving,
    #[serde(rename = "kserve-v1")]
    KserveV1,
    #[serde(rename = "kserve-v2")]
    KserveV2,
    Openai,
    Rekognition,
    Textract,
    Comprehend,
    Jmespath,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Already a probability in 0..1.
    Unit,
    /// 0..100, as AWS AI services report it.
    Percent,
    /// A natural-log probability (≤ 0).
    Logprob,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Min,
    Max,
    Mean,
    /// Top-1 minus top-2 of a probability vector.
    Margin,
    /// 1 − normalised entropy of a probability vector.
    Entropy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfidenceConfig {
    pub preset: Preset,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    pub scale: Scale,
    pub aggregate: Aggregate,
}

impl Default for ConfidenceConfig {
    fn default() -> Self {
        Self {
            preset: Preset::Auto,
            expression: None,
            scale: Scale::Unit,
            aggregate: Aggregate::Min,
        }
    }
}
