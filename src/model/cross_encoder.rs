//! Sequence classifiers: cross-encoders (rerankers, and NLI models that score a pair against
//! several labels) and transformers' text classifiers. How a folder is told to be one, its
//! labels, and how its logits become the scores `CrossEncoder.predict` returns.
//!
//! A folder is one when `config_sentence_transformers.json` says `model_type:
//! "CrossEncoder"` (sentence-transformers 5 writes this), or, in older Hub repos and plain
//! transformers repositories that have no such file, when `config.json` names a
//! `*ForSequenceClassification` architecture and no `modules.json` gives it a Pooling module.
//! One label makes it a reranker; more, a classifier.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::LoadError;
pub use super::dense::Activation;
use super::st_config::{read_json, read_modules};

/// What the folder says about its cross-encoder head.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossEncoder {
    pub activation: Activation,
    /// `config.json` → `id2label`.
    pub labels: BTreeMap<String, String>,
    /// `config.json`'s `problem_type` is `multi_label_classification`: an independent
    /// sigmoid per label, where single-label models take a softmax over them.
    pub multi_label: bool,
}

impl CrossEncoder {
    /// The labels in the order of the graph's logits: by id, `LABEL_i` for an id the config
    /// does not name.
    pub fn label_names(&self) -> Vec<String> {
        (0..self.labels.len())
            .map(|i| {
                self.labels
                    .get(&i.to_string())
                    .cloned()
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }
}

#[derive(Deserialize, Default)]
struct StFile {
    model_type: Option<String>,
    activation_fn: Option<String>,
}

#[derive(Deserialize, Default)]
struct TransformerFile {
    #[serde(default)]
    architectures: Vec<String>,
    id2label: Option<BTreeMap<String, String>>,
    num_labels: Option<usize>,
    problem_type: Option<String>,
    sentence_transformers: Option<LegacyStSection>,
    sbert_ce_default_activation_function: Option<String>,
}

#[derive(Deserialize, Default)]
struct LegacyStSection {
    activation_fn: Option<String>,
}

impl CrossEncoder {
    /// `None` when the folder is not a cross-encoder.
    pub fn read(dir: &Path) -> Result<Option<Self>, LoadError> {
        let st: StFile = read_json(dir, "config_sentence_transformers.json")?.unwrap_or_default();
        let transformer: TransformerFile = read_json(dir, "config.json")?.unwrap_or_default();
        let is_cross_encoder = match st.model_type.as_deref() {
            Some("CrossEncoder") => true,
            Some(_) => false,
            None => {
                let classifies = transformer
                    .architectures
                    .iter()
                    .any(|a| a.ends_with("ForSequenceClassification"));
                classifies
                    && !read_modules(dir)?
                        .iter()
                        .any(|m| m.class_name() == "Pooling")
            }
        };
        if !is_cross_encoder {
            return Ok(None);
        }
        // transformers' default when a config names no labels is two.
        let labels = transformer.id2label.unwrap_or_else(|| {
            (0..transformer.num_labels.unwrap_or(2))
                .map(|i| (i.to_string(), format!("LABEL_{i}")))
                .collect()
        });
        if labels.is_empty() {
            return Err(LoadError::file(
                dir.join("config.json"),
                "the classifier names no labels (`id2label` is empty)",
            ));
        }
        let multi_label = transformer.problem_type.as_deref() == Some("multi_label_classification");
        // Where sentence-transformers looks, newest first.
        let named = st
            .activation_fn
            .or(transformer
                .sentence_transformers
                .and_then(|s| s.activation_fn))
            .or(transformer.sbert_ce_default_activation_function);
        let activation = match named {
            None => Activation::Sigmoid,
            // Without trust_remote_code sentence-transformers imports only torch's own
            // classes, and uses its default otherwise.
            Some(path) if !path.starts_with("torch.") => {
                tracing::warn!(
                    "{}: activation `{path}` is not one of torch's; using Sigmoid, as \
                     sentence-transformers does without trust_remote_code",
                    dir.display()
                );
                Activation::Sigmoid
            }
            Some(path) => Activation::parse(&path).ok_or_else(|| {
                LoadError::file(
                    dir.join("config_sentence_transformers.json"),
                    format!(
                        "activation_fn `{path}` is not supported (supported: Sigmoid, Identity, \
                         Tanh, ReLU, GELU, SiLU)"
                    ),
                )
            })?,
        };
        Ok(Some(Self {
            activation,
            labels,
            multi_label,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Task;

    fn models() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models")
    }

    #[test]
    fn reads_both_layouts_of_the_fixtures() {
        for layout in ["rerank", "rerank-legacy"] {
            for name in ["bert-cross-encoder", "xlmr-reranker"] {
                let dir = models().join(layout).join(name);
                let ce = CrossEncoder::read(&dir).unwrap().expect("a cross-encoder");
                assert_eq!(ce.activation, Activation::Sigmoid, "{layout}/{name}");
                assert_eq!(ce.labels.len(), 1);
                assert_eq!(Task::of_dir(&dir).unwrap(), Task::Rerank);
            }
        }
        let minilm = models().join("sentence-transformers/all-MiniLM-L6-v2");
        assert_eq!(Task::of_dir(&minilm).unwrap(), Task::Embedding);
    }

    fn read_with(files: &[(&str, &str)]) -> Result<Option<CrossEncoder>, LoadError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        CrossEncoder::read(dir.path())
    }

    #[test]
    fn finds_the_activation_where_each_version_wrote_it() {
        let one_label =
            r#""architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}"#;
        let activation = |config: String| {
            read_with(&[("config.json", &config)])
                .unwrap()
                .unwrap()
                .activation
        };
        assert_eq!(activation(format!("{{{one_label}}}")), Activation::Sigmoid);
        assert_eq!(
            activation(format!(
                r#"{{{one_label}, "sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}}"#
            )),
            Activation::Identity
        );
        assert_eq!(
            activation(format!(
                r#"{{{one_label}, "sentence_transformers": {{"activation_fn": "torch.nn.modules.activation.Tanh"}}}}"#
            )),
            Activation::Tanh
        );
        let st5 = read_with(&[
            ("config.json", &format!("{{{one_label}}}")),
            (
                "config_sentence_transformers.json",
                r#"{"model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.linear.Identity"}"#,
            ),
        ]);
        assert_eq!(st5.unwrap().unwrap().activation, Activation::Identity);
        let softmax = read_with(&[(
            "config.json",
            &format!(
                r#"{{{one_label}, "sentence_transformers": {{"activation_fn": "torch.nn.Softmax"}}}}"#
            ),
        )]);
        assert!(softmax.unwrap_err().to_string().contains("Softmax"));
    }

    #[test]
    fn embedding_models_are_not_rerankers_and_classifiers_have_labels() {
        let pooled = read_with(&[
            (
                "config.json",
                r#"{"architectures": ["BertForSequenceClassification"], "id2label": {"0": "A"}}"#,
            ),
            (
                "modules.json",
                r#"[{"path": "", "type": "sentence_transformers.models.Transformer"},
                    {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]"#,
            ),
        ]);
        assert_eq!(pooled.unwrap(), None);
        let classifier = read_with(&[(
            "config.json",
            r#"{"architectures": ["BertForSequenceClassification"], "id2label": {"0": "NEG", "1": "POS"}}"#,
        )]);
        let classifier = classifier.unwrap().expect("a classifier");
        assert_eq!(classifier.label_names(), ["NEG", "POS"]);
        assert!(!classifier.multi_label);
        assert_eq!(read_with(&[]).unwrap(), None);
    }
}
