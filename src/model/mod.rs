//! A loaded model: its sentence-transformers configuration, tokenizer and ONNX session, and
//! the one path that turns inputs into the vectors sentence-transformers computes.

mod classify;
mod cross_encoder;
mod dense;
mod embed;
mod embed_all;
mod encoder;
mod head;
mod inputs;
mod int8_ranges;
mod kind;
mod load;
mod long_text;
mod pooling;
mod rerank;
mod respin;
mod router;
mod run_shape;
mod settings;
pub mod source;
mod sparse;
mod splade;
mod st_config;
mod static_embedding;
#[cfg(test)]
mod test_tokenizers;
mod tokenize;
mod weights;
mod wordpiece;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use classify::{Classified, ClassifyInput, ClassifyOptions};
pub use embed::Embedded;
pub use embed_all::AllTokens;
pub use encoder::Encoder;
pub use inputs::{EmbedOptions, Token, TokenInput, warm_up_tiktoken};
pub use int8_ranges::RangesSource;
pub use kind::Task;
pub use pooling::{Pooling, PoolingMode, l2_normalize};
pub use rerank::{RerankOptions, Reranked};
pub use router::InputType;
pub use settings::ModelConfig;
pub use source::{HubSettings, ModelSource};
pub use sparse::SparseVector;
pub use tokenize::{TextPreparation, TextTokenizer, TokenSeq, TruncationDirection};

use kind::ModelKind;
use static_embedding::StaticEmbedding;

use crate::batcher::{BatchError, Batcher};
use crate::metrics::METRICS;
use crate::runtime::Device;

/// Why a model could not be loaded. Messages name the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Source(String),
    #[error("{0}")]
    Config(String),
}

impl LoadError {
    pub fn file(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Self::File {
            path: path.as_ref().to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Why inputs could not be embedded.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The caller's fault; `param` names the request field.
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    #[error("tokenization failed: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("the embedding task stopped: {0}")]
    Task(String),
}

/// One input of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    /// Ids of the model's own vocabulary, used as they are.
    Tokens(Vec<u32>),
}

impl Input {
    /// Bytes of text, or of token ids, the input holds: what tokenizing it costs. Token ids
    /// count as too large to tokenize inline until the `cl100k_base` table they may be
    /// decoded with is loaded.
    fn size(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Tokens(ids) if inputs::cl100k_loaded() => ids.len() * size_of::<u32>(),
            Self::Tokens(_) => usize::MAX,
        }
    }
}

/// Most bytes of input a request may hold to be tokenized on the async task that parsed it.
/// Tokenizing that much takes tens of microseconds; handing it to the blocking pool and back
/// costs two thread wake-ups, each up to 0.1 ms when the woken core idles (as on a VM), on
/// every request. Larger requests still leave the async runtime.
const INLINE_INPUT_BYTES: usize = 2048;

/// Whether inputs of these sizes are cheap enough to tokenize without leaving the caller.
fn is_small(sizes: impl IntoIterator<Item = usize>) -> bool {
    sizes
        .into_iter()
        .try_fold(0usize, |total, size| {
            total
                .checked_add(size)
                .filter(|&total| total <= INLINE_INPUT_BYTES)
        })
        .is_some()
}

/// Runs `tokenize` on this task when its inputs are `small`, else on the blocking pool.
async fn tokenizing<T: Send + 'static>(
    small: bool,
    tokenize: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EmbedError> {
    if small {
        Ok(tokenize())
    } else {
        tokio::task::spawn_blocking(tokenize)
            .await
            .map_err(|e| EmbedError::Task(e.to_string()))
    }
}

/// A model to load: the name it is cached under, and its settings (where from, and how
/// to read and run it).
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub config: ModelConfig,
}

impl ModelSpec {
    /// `source` with every setting at its default.
    pub fn new(name: impl Into<String>, source: ModelSource) -> Self {
        Self {
            name: name.into(),
            config: ModelConfig {
                source,
                ..ModelConfig::default()
            },
        }
    }
}

/// Whether inputs may share an ONNX Runtime run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// Inputs share runs: for graphs whose result for one row does not depend on the others.
    Dynamic,
    /// Every input runs alone: dynamically quantized graphs pick their activation scale per
    /// run, so a vector would change with its batch-mates (cosine about 0.98 to 0.994).
    Isolated,
}

/// What computes a model's vectors.
enum Backend {
    /// An ONNX graph, run on the model's batcher thread.
    Graph(Batcher<Encoder>),
    /// A static embedding table, looked up on the request's own blocking thread.
    Static(StaticEmbedding),
}

pub struct Model {
    name: String,
    dir: PathBuf,
    /// The graph's file, for transformer models.
    onnx_file: Option<String>,
    dimension: usize,
    /// `None` for static embeddings whose tokenizer file does not truncate.
    max_seq_length: Option<usize>,
    prompts: BTreeMap<String, String>,
    /// Prompt lengths in tokens, for models that leave the prompt out of pooling.
    excluded_prompt_lengths: BTreeMap<String, usize>,
    default_prompt_name: Option<String>,
    token_input: TokenInput,
    truncate: bool,
    /// Whether an input of no tokens can be embedded (else it is refused).
    embeds_empty: bool,
    tokenizer: TextTokenizer,
    backend: Backend,
    /// Whether the vectors end L2-normalized (the folder's last module is Normalize).
    normalizes: bool,
    /// The graph's output type (`float32` for static tables), as `/info` reports it.
    dtype: &'static str,
    /// What the model is: embedder, sparse encoder, reranker or classifier.
    kind: ModelKind,
    /// The width of the graph's token embeddings, where they are pooled here (`/embed_all`).
    token_width: Option<usize>,
    /// A Router model's other routes; this model is its default route.
    routes: router::Routes,
    /// What texts are when a request does not say (the `[[models]]` entry's `input_type`).
    input_type: Option<InputType>,
    /// The folder's pooling, as `/info` reports it (`None` for graphs that pool themselves).
    pooling: Option<Pooling>,
    /// Its int8 ranges, computed on the first request that needs them.
    int8: int8_ranges::Int8Ranges,
    /// Where it runs: the device the graph got (after `auto`), the CPU for static tables.
    device: Device,
}

impl Model {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ONNX graph's file, or "(static)" for a static embedding model.
    pub fn onnx_file(&self) -> &str {
        self.onnx_file.as_deref().unwrap_or("(static)")
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    pub fn max_seq_length(&self) -> Option<usize> {
        self.max_seq_length
    }

    pub fn normalizes(&self) -> bool {
        self.normalizes
    }

    pub fn dtype(&self) -> &'static str {
        self.dtype
    }

    pub fn pooling(&self) -> Option<&Pooling> {
        self.pooling.as_ref()
    }

    /// The batcher's limits, for graph models.
    pub fn batch_limits(&self) -> Option<crate::batcher::BatchLimits> {
        match &self.backend {
            Backend::Graph(batcher) => Some(batcher.limits()),
            Backend::Static(_) => None,
        }
    }
}

impl Model {
    /// Encoded inputs as the batcher takes them, with their tokens in all. An input that
    /// truncation cut is refused when `truncate` is off, and so is a request over
    /// `max_tokens`; `param` names the request's field, `input(i)` its `i`th input.
    fn sequences(
        &self,
        encoded: Vec<tokenize::Encoded>,
        truncate: bool,
        max_tokens: usize,
        param: &'static str,
        input: impl Fn(usize) -> String,
    ) -> Result<(Vec<TokenSeq>, usize), EmbedError> {
        let mut tokens = 0;
        let mut seqs = Vec::with_capacity(encoded.len());
        for (i, encoded) in encoded.into_iter().enumerate() {
            if encoded.truncated && !truncate {
                return Err(EmbedError::Invalid {
                    param,
                    message: format!(
                        "{} is longer than the {} tokens model `{}` takes, and truncation is off",
                        input(i),
                        self.max_seq_length.unwrap_or_default(),
                        self.name
                    ),
                });
            }
            tokens += encoded.ids.len();
            seqs.push(TokenSeq {
                ids: encoded.ids,
                type_ids: encoded.type_ids,
                pool_from: 0,
                unpooled: false,
            });
        }
        if tokens > max_tokens {
            return Err(inputs::too_many_tokens(param, max_tokens));
        }
        Ok((seqs, tokens))
    }
}

impl Drop for Model {
    fn drop(&mut self) {
        let device = self.device.to_string();
        METRICS
            .model_device
            .with_label_values(&[self.name.as_str(), device.as_str()])
            .dec();
        tracing::info!(model = %self.name, "unloaded {}: its memory is released", self.name);
        // Resident memory (and the cache's memory budget) then reflects the models loaded.
        crate::memory::trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_means_few_bytes_in_all() {
        assert!(is_small([]));
        assert!(is_small([10, 20]));
        assert!(is_small([INLINE_INPUT_BYTES]));
        assert!(!is_small([INLINE_INPUT_BYTES, 1]));
        assert!(!is_small([usize::MAX, 1]), "no overflow");
        assert!(!is_small(
            [Input::Text("x".repeat(INLINE_INPUT_BYTES + 1))]
                .iter()
                .map(Input::size)
        ));
    }
}
