//! What a sentence-transformers model folder says about itself, in either layout people
//! publish: the modules it chains (`modules.json`), each read from its own config
//! (`1_Pooling/config.json` with `pooling_mode_*` flags or with `pooling_mode`; `N_Dense/`),
//! sequence length and casing (`sentence_bert_config.json`, then the tokenizer's and the
//! model's configs, as sentence-transformers falls back), and prompts
//! (`config_sentence_transformers.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::LoadError;
use super::pooling::{Pooling, PoolingMode};
use super::splade::SpladePooling;

/// Values above this in `model_max_length` are transformers' "no limit" sentinel, not a length.
const NO_LIMIT_SENTINEL: u64 = 1_000_000;

/// The module that turns text into vectors (the first in `modules.json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputModule {
    /// A transformer, run as the folder's ONNX graph.
    Transformer,
    /// A `StaticEmbedding` table and tokenizer in this folder: no graph at all.
    Static(PathBuf),
    /// A `SparseStaticEmbedding` (inference-free SPLADE's query side): a weight per
    /// vocabulary token and a tokenizer in this folder.
    SparseStatic(PathBuf),
}

/// A module applied to the pooled vector, in `modules.json` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadModule {
    /// A `Dense` layer with its config and weights in this folder.
    Dense(PathBuf),
    Normalize,
}

#[derive(Debug, Clone)]
pub struct StConfig {
    pub input: InputModule,
    /// `None` when the folder has no pooling module (the graph must pool itself).
    pub pooling: Option<Pooling>,
    /// A sparse encoder's pooling (`MLMTransformer` then `SpladePooling`).
    pub sparse: Option<SpladePooling>,
    /// A sparse encoder's most non-zero weights per vector.
    pub max_active_dims: Option<usize>,
    pub include_prompt: bool,
    /// What follows pooling.
    pub head: Vec<HeadModule>,
    pub max_seq_length: Option<usize>,
    pub do_lower_case: bool,
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
}

impl StConfig {
    /// A sparse encoder: SPLADE pooling, or a sparse static table.
    pub fn is_sparse(&self) -> bool {
        self.sparse.is_some() || matches!(self.input, InputModule::SparseStatic(_))
    }

    pub fn normalizes(&self) -> bool {
        self.head.contains(&HeadModule::Normalize)
    }
}

/// One entry of `modules.json`: a module's folder and class.
#[derive(Debug, Clone, Deserialize)]
pub struct ModuleEntry {
    #[serde(default)]
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl ModuleEntry {
    /// The class name the type ends with: `sentence_transformers.models.Pooling` and
    /// `sentence_transformers.sentence_transformer.modules.pooling.Pooling` are both `Pooling`.
    pub fn class_name(&self) -> &str {
        self.kind.rsplit('.').next().unwrap_or(&self.kind)
    }

    /// A module that makes its pipeline a sparse encoder.
    pub fn is_sparse(&self) -> bool {
        matches!(
            self.class_name(),
            "SpladePooling" | "SparseStaticEmbedding" | "MLMTransformer"
        )
    }
}

/// The folder's `modules.json` entries, none when it has no such file.
pub fn read_modules(dir: &Path) -> Result<Vec<ModuleEntry>, LoadError> {
    Ok(read_json(dir, "modules.json")?.unwrap_or_default())
}

/// `1_Pooling/config.json`, as sentence-transformers 5 writes it (`pooling_mode`, one name or
/// a list) or as older versions did (one `pooling_mode_*` flag per mode).
#[derive(Deserialize)]
struct PoolingFile {
    pooling_mode: Option<OneOrMany>,
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

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl PoolingFile {
    fn pooling(&self) -> Result<Pooling, String> {
        let Some(named) = &self.pooling_mode else {
            let enabled = |mode| match mode {
                PoolingMode::Cls => self.pooling_mode_cls_token,
                PoolingMode::Max => self.pooling_mode_max_tokens,
                PoolingMode::Mean => self.pooling_mode_mean_tokens,
                PoolingMode::MeanSqrtLen => self.pooling_mode_mean_sqrt_len_tokens,
                PoolingMode::WeightedMean => self.pooling_mode_weightedmean_tokens,
                PoolingMode::LastToken => self.pooling_mode_lasttoken,
            };
            // sentence-transformers reads a config that enables no mode as mean pooling.
            return Ok(Pooling::new(enabled).unwrap_or(Pooling::single(PoolingMode::Mean)));
        };
        let names = match named {
            OneOrMany::One(name) => std::slice::from_ref(name),
            OneOrMany::Many(names) => names.as_slice(),
        };
        // Modes are pooled and concatenated in the order given.
        let modes = names
            .iter()
            .map(|name| {
                PoolingMode::from_name(name).ok_or_else(|| {
                    format!(
                        "pooling_mode `{name}` is not one of cls, max, mean, \
                         mean_sqrt_len_tokens, weightedmean, lasttoken"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Pooling::ordered(modes).ok_or_else(|| "pooling_mode names no mode".to_string())
    }
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
    max_active_dims: Option<usize>,
}

#[derive(Deserialize, Default)]
struct TokenizerConfigFile {
    model_max_length: Option<f64>,
}

#[derive(Deserialize, Default)]
struct TransformerConfigFile {
    max_position_embeddings: Option<i64>,
}

impl StConfig {
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        Self::of_modules(dir, dir, &read_modules(dir)?)
    }

    /// The pipeline of `modules` (paths relative to `dir`, the model's folder), whose
    /// transformer keeps its own files in `files`: `dir` itself, or one route's folder of a
    /// Router model.
    pub fn of_modules(
        dir: &Path,
        files: &Path,
        modules: &[ModuleEntry],
    ) -> Result<Self, LoadError> {
        let modules_path = dir.join("modules.json");
        let refuse = |i: usize, module: &ModuleEntry, reason: &str| {
            LoadError::file(
                &modules_path,
                format!(
                    "module {i} `{}` (folder `{}`) {reason}",
                    module.kind, module.path
                ),
            )
        };
        let mut input = None;
        let mut pooling = None;
        let mut sparse = None;
        let mut masked_lm = false;
        let mut include_prompt = true;
        let mut head = Vec::new();
        for (i, module) in modules.iter().enumerate() {
            let folder = dir.join(&module.path);
            match module.class_name() {
                "Transformer" if i == 0 => input = Some(InputModule::Transformer),
                // A masked-language-model head's logits, which only SpladePooling reads.
                "MLMTransformer" if i == 0 => {
                    input = Some(InputModule::Transformer);
                    masked_lm = true;
                }
                "SpladePooling" if masked_lm && sparse.is_none() => {
                    sparse = Some(SpladePooling::read(&folder)?);
                }
                "SpladePooling" => {
                    return Err(refuse(i, module, "must follow an MLMTransformer, once"));
                }
                _ if masked_lm => {
                    return Err(refuse(
                        i,
                        module,
                        "is not supported in a sparse encoder (supported: MLMTransformer, then \
                         SpladePooling)",
                    ));
                }
                "StaticEmbedding" if i == 0 => input = Some(InputModule::Static(folder)),
                "SparseStaticEmbedding" if i == 0 => {
                    input = Some(InputModule::SparseStatic(folder));
                }
                "Transformer" | "StaticEmbedding" => {
                    return Err(refuse(i, module, "must be the first module"));
                }
                "Pooling" if input == Some(InputModule::Transformer) && pooling.is_none() => {
                    let file = folder.join("config.json");
                    let config: PoolingFile = read_json(&folder, "config.json")?
                        .ok_or_else(|| LoadError::file(&file, "missing"))?;
                    include_prompt = config.include_prompt;
                    pooling = Some(config.pooling().map_err(|e| LoadError::file(&file, e))?);
                }
                "Pooling" => {
                    return Err(refuse(i, module, "must follow the Transformer, once"));
                }
                "Dense" if input.is_some() => head.push(HeadModule::Dense(folder)),
                "Normalize" if input.is_some() => head.push(HeadModule::Normalize),
                _ if i == 0 => {
                    return Err(refuse(
                        i,
                        module,
                        "is not supported as the first module (supported: Transformer, \
                         MLMTransformer, StaticEmbedding)",
                    ));
                }
                _ => {
                    return Err(refuse(
                        i,
                        module,
                        "is not supported (supported after the first module: Pooling, Dense, \
                         Normalize)",
                    ));
                }
            }
        }
        if masked_lm && sparse.is_none() {
            return Err(LoadError::file(
                &modules_path,
                "lists an MLMTransformer without the SpladePooling that reads its logits",
            ));
        }
        if input == Some(InputModule::Transformer) && pooling.is_none() && !head.is_empty() {
            return Err(LoadError::file(
                &modules_path,
                "lists modules after the Transformer but no Pooling",
            ));
        }
        if modules.is_empty() {
            // A bare transformers export: sentence-transformers would wrap it in mean pooling.
            pooling = Some(Pooling::single(PoolingMode::Mean));
        }

        let bert: SentenceBertFile =
            read_json(files, "sentence_bert_config.json")?.unwrap_or_default();
        let tokenizer: TokenizerConfigFile =
            read_json(files, "tokenizer_config.json")?.unwrap_or_default();
        let transformer: TransformerConfigFile =
            read_json(files, "config.json")?.unwrap_or_default();
        // sentence-transformers: the configured length, else the tokenizer's capped at the
        // model's position embeddings (-1 means none).
        let positions = transformer
            .max_position_embeddings
            .filter(|&n| n > 0)
            .map(|n| n as usize);
        let tokenizer_length = tokenizer
            .model_max_length
            .filter(|&n| n >= 1.0 && n < NO_LIMIT_SENTINEL as f64)
            .map(|n| n as usize);
        let max_seq_length = bert.max_seq_length.or(match (tokenizer_length, positions) {
            (Some(t), Some(p)) => Some(t.min(p)),
            (t, p) => t.or(p),
        });

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
            input: input.unwrap_or(InputModule::Transformer),
            pooling,
            sparse,
            max_active_dims: st.max_active_dims,
            include_prompt,
            head,
            max_seq_length,
            do_lower_case: bert.do_lower_case,
            prompts: st.prompts,
            default_prompt_name: st.default_prompt_name,
        })
    }
}

/// Reads and parses `dir/name`; `Ok(None)` when the file does not exist.
pub(super) fn read_json<T: DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, LoadError> {
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
        assert_eq!(c.input, InputModule::Transformer);
        assert_eq!(c.pooling, Some(Pooling::single(PoolingMode::Mean)));
        assert_eq!(c.head, [HeadModule::Normalize]);
        assert_eq!(c.max_seq_length, Some(256));
    }

    #[test]
    fn reads_cls_prompts_without_normalize() {
        let c = StConfig::read(&models().join("tiny/bert-cls")).unwrap();
        assert_eq!(c.pooling, Some(Pooling::single(PoolingMode::Cls)));
        assert!(!c.normalizes());
        assert_eq!(c.prompts["query"], "query: ");
        assert_eq!(c.default_prompt_name, None);
    }

    #[test]
    fn reads_both_layouts_alike() {
        for name in ["bert-labse", "gemma3-embeddinggemma", "bert-mean-sqrt-len"] {
            let old = StConfig::read(&models().join("zoo").join(name)).unwrap();
            let new = StConfig::read(&models().join("zoo-st5").join(name)).unwrap();
            assert_eq!(old.pooling, new.pooling, "{name}");
            assert_eq!(old.max_seq_length, new.max_seq_length, "{name}");
            let folders = |c: &StConfig| {
                c.head
                    .iter()
                    .map(|m| match m {
                        HeadModule::Dense(dir) => dir.file_name().unwrap().to_owned(),
                        HeadModule::Normalize => "Normalize".into(),
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(folders(&old), folders(&new), "{name}");
        }
        let gemma = StConfig::read(&models().join("zoo-st5/gemma3-embeddinggemma")).unwrap();
        assert_eq!(gemma.head.len(), 3);
        assert_eq!(gemma.max_seq_length, Some(64));
    }

    #[test]
    fn reads_static_embedding_folders() {
        let hub = StConfig::read(&models().join("zoo/static-embedding")).unwrap();
        assert_eq!(
            hub.input,
            InputModule::Static(models().join("zoo/static-embedding/0_StaticEmbedding"))
        );
        assert_eq!(hub.head, [HeadModule::Normalize]);
        let st5 = StConfig::read(&models().join("zoo-st5/static-embedding")).unwrap();
        assert_eq!(
            st5.input,
            InputModule::Static(models().join("zoo-st5/static-embedding/"))
        );
    }

    fn pooling_of(json: &str) -> Result<Pooling, String> {
        serde_json::from_str::<PoolingFile>(json).unwrap().pooling()
    }

    #[test]
    fn reads_pooling_in_every_format() {
        let single = |mode| Ok(Pooling::single(mode));
        assert_eq!(
            pooling_of(r#"{"pooling_mode": "lasttoken"}"#),
            single(PoolingMode::LastToken)
        );
        assert_eq!(
            pooling_of(r#"{"pooling_mode": "mean_sqrt_len_tokens"}"#),
            single(PoolingMode::MeanSqrtLen)
        );
        assert_eq!(
            pooling_of(r#"{"pooling_mode": ["mean", "cls"]}"#)
                .unwrap()
                .modes(),
            [PoolingMode::Mean, PoolingMode::Cls]
        );
        assert_eq!(
            pooling_of(r#"{"pooling_mode_max_tokens": true, "pooling_mode_cls_token": true}"#)
                .unwrap()
                .modes(),
            [PoolingMode::Cls, PoolingMode::Max]
        );
        // As sentence-transformers reads it: no mode enabled means mean.
        assert_eq!(
            pooling_of(r#"{"pooling_mode_cls_token": false}"#),
            single(PoolingMode::Mean)
        );
        assert!(
            pooling_of(r#"{"pooling_mode": "median"}"#)
                .unwrap_err()
                .contains("median")
        );
        assert!(pooling_of(r#"{"pooling_mode": []}"#).is_err());
    }

    fn modules_error(modules: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.json"), modules).unwrap();
        std::fs::create_dir(dir.path().join("1_Pooling")).unwrap();
        std::fs::write(dir.path().join("1_Pooling/config.json"), "{}").unwrap();
        StConfig::read(dir.path()).unwrap_err().to_string()
    }

    #[test]
    fn refuses_modules_it_does_not_understand_by_name() {
        let transformer = r#"{"path": "", "type": "sentence_transformers.models.Transformer"}"#;
        let pooling = r#"{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}"#;
        let err = modules_error(&format!(
            r#"[{transformer}, {pooling}, {{"path": "2_LayerNorm", "type": "sentence_transformers.models.LayerNorm"}}]"#
        ));
        assert!(
            err.contains("sentence_transformers.models.LayerNorm"),
            "{err}"
        );
        assert!(err.contains("2_LayerNorm"), "{err}");
        let err = modules_error(r#"[{"path": "", "type": "my_package.CustomEncoder"}]"#);
        assert!(err.contains("my_package.CustomEncoder"), "{err}");
        let err = modules_error(&format!(
            r#"[{transformer}, {{"path": "2_Dense", "type": "sentence_transformers.models.Dense"}}]"#
        ));
        assert!(err.contains("no Pooling"), "{err}");
    }

    #[test]
    fn caps_the_tokenizer_length_at_the_position_embeddings() {
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
            length_with("tokenizer_config.json", r#"{"model_max_length": 8192}"#),
            Some(512)
        );
        assert_eq!(
            length_with("tokenizer_config.json", r#"{"model_max_length": 128}"#),
            Some(128)
        );
        let bert = r#"{"max_seq_length": 1024}"#;
        assert_eq!(length_with("sentence_bert_config.json", bert), Some(1024));
    }

    #[test]
    fn bad_json_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("modules.json"), "[{").unwrap();
        let err = StConfig::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("modules.json"), "{err}");
    }
}
