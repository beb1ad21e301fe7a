//! What a sentence-transformers model folder says about itself: its modules (`modules.json`),
//! pooling (`1_Pooling/config.json`), sequence length and casing
//! (`sentence_bert_config.json`, with the fallbacks sentence-transformers itself uses) and
//! prompts (`config_sentence_transformers.json`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::LoadError;
use super::pooling::{Pooling, PoolingMode};

/// Values above this in `model_max_length` are transformers' "no limit" sentinel, not a length.
const NO_LIMIT_SENTINEL: u64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct StConfig {
    /// `None` when the folder has no pooling module (the graph must pool itself).
    pub pooling: Option<Pooling>,
    pub include_prompt: bool,
    pub normalize: bool,
    /// A `Dense` (or other) module after pooling that an ONNX graph without a
    /// `sentence_embedding` output cannot reproduce.
    pub unsupported_modules: Vec<String>,
    pub max_seq_length: Option<usize>,
    pub do_lower_case: bool,
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default = "yes")]
    include_prompt: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
struct SentenceBertFile {
    max_seq_length: Option<usize>,
    #[serde(default)]
    do_lower_case: bool,
}

#[derive(Deserialize, Default)]
struct SentenceTransformersFile {
    #[serde(default)]
    prompts: BTreeMap<String, String>,
    default_prompt_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct TokenizerConfigFile {
    model_max_length: Option<f64>,
}

#[derive(Deserialize, Default)]
struct TransformerConfigFile {
    max_position_embeddings: Option<usize>,
}

impl StConfig {
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let modules: Vec<ModuleEntry> = read_json(dir, "modules.json")?.unwrap_or_default();
        let mut pooling = None;
        let mut include_prompt = true;
        let mut normalize = false;
        let mut unsupported_modules = Vec::new();
        for module in &modules {
            match module.kind.rsplit('.').next().unwrap_or_default() {
                "Transformer" => {}
                "Pooling" => {
                    let file = format!("{}/config.json", module.path);
                    let config: PoolingFile = read_json(dir, &file)?
                        .ok_or_else(|| LoadError::file(dir.join(&file), "missing"))?;
                    include_prompt = config.include_prompt;
                    pooling = Some(
                        Pooling::new(|mode| match mode {
                            PoolingMode::Cls => config.pooling_mode_cls_token,
                            PoolingMode::Max => config.pooling_mode_max_tokens,
                            PoolingMode::Mean => config.pooling_mode_mean_tokens,
                            PoolingMode::MeanSqrtLen => config.pooling_mode_mean_sqrt_len_tokens,
                            PoolingMode::WeightedMean => config.pooling_mode_weightedmean_tokens,
                            PoolingMode::LastToken => config.pooling_mode_lasttoken,
                        })
                        .ok_or_else(|| {
                            LoadError::file(dir.join(&file), "enables no pooling mode")
                        })?,
                    );
                }
                "Normalize" => normalize = true,
                _ => unsupported_modules.push(module.kind.clone()),
            }
        }
        if modules.is_empty() {
            // A bare transformers export: sentence-transformers would wrap it in mean pooling.
            pooling = Some(Pooling::single(PoolingMode::Mean));
        }

        let bert: SentenceBertFile =
            read_json(dir, "sentence_bert_config.json")?.unwrap_or_default();
        let tokenizer: TokenizerConfigFile =
            read_json(dir, "tokenizer_config.json")?.unwrap_or_default();
        let transformer: TransformerConfigFile = read_json(dir, "config.json")?.unwrap_or_default();
        let max_seq_length = bert
            .max_seq_length
            .or_else(|| {
                tokenizer
                    .model_max_length
                    .filter(|&n| n >= 1.0 && n < NO_LIMIT_SENTINEL as f64)
                    .map(|n| n as usize)
            })
            .or(transformer.max_position_embeddings);

        let st: SentenceTransformersFile =
            read_json(dir, "config_sentence_transformers.json")?.unwrap_or_default();
        if let Some(name) = &st.default_prompt_name
            && !st.prompts.contains_key(name)
        {
            return Err(LoadError::file(
                dir.join("config_sentence_transformers.json"),
                format!("default_prompt_name `{name}` is not one of its prompts"),
            ));
        }

        Ok(Self {
            pooling,
            include_prompt,
            normalize,
            unsupported_modules,
            max_seq_length,
            do_lower_case: bert.do_lower_case,
            prompts: st.prompts,
            default_prompt_name: st.default_prompt_name,
        })
    }
}

/// Reads and parses `dir/name`; `Ok(None)` when the file does not exist.
fn read_json<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, LoadError> {
    let path = dir.join(name);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LoadError::file(path, e.to_string())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| LoadError::file(path, format!("invalid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models")
    }

    #[test]
    fn reads_minilm() {
        let c = StConfig::read(&models().join("sentence-transformers/all-MiniLM-L6-v2")).unwrap();
        assert_eq!(c.pooling, Some(Pooling::single(PoolingMode::Mean)));
        assert!(c.normalize);
        assert_eq!(c.max_seq_length, Some(256));
        assert!(c.unsupported_modules.is_empty());
    }

    #[test]
    fn reads_cls_prompts_without_normalize() {
        let c = StConfig::read(&models().join("tiny/bert-cls")).unwrap();
        assert_eq!(c.pooling, Some(Pooling::single(PoolingMode::Cls)));
        assert!(!c.normalize);
        assert_eq!(c.prompts["query"], "query: ");
        assert_eq!(c.default_prompt_name, None);
    }

    #[test]
    fn reads_last_token() {
        let c = StConfig::read(&models().join("tiny/decoder-lasttoken")).unwrap();
        assert_eq!(c.pooling, Some(Pooling::single(PoolingMode::LastToken)));
    }

    #[test]
    fn falls_back_to_tokenizer_then_model_config_for_length() {
        let dir = tempfile::tempdir().unwrap();
        let length_with = |file: &str, json: &str| {
            std::fs::write(dir.path().join(file), json).unwrap();
            StConfig::read(dir.path()).unwrap().max_seq_length
        };
        assert_eq!(
            length_with("config.json", r#"{"max_position_embeddings": 512}"#),
            Some(512)
        );
        // transformers' "no limit" sentinel is not a length.
        let sentinel = r#"{"model_max_length": 1000000000000000019884624838656}"#;
        assert_eq!(length_with("tokenizer_config.json", sentinel), Some(512));
        assert_eq!(
            length_with("tokenizer_config.json", r#"{"model_max_length": 128}"#),
            Some(128)
        );
        let bert = r#"{"max_seq_length": 64}"#;
        assert_eq!(length_with("sentence_bert_config.json", bert), Some(64));
    }

    #[test]
    fn bad_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.json"), "[{").unwrap();
        let err = StConfig::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("modules.json"), "{err}");
    }
}
