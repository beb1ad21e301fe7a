//! What a model is, said in one place: its `ModelKind`, read once from its folder's files when
//! it loads, and the `Task` (the routes that serve it) that follows from it.

use std::path::Path;

use serde::Serialize;

use super::cross_encoder::{Activation, CrossEncoder};
use super::router::RouterConfig;
use super::splade::SpladePooling;
use super::st_config::{ModuleEntry, StConfig, read_modules};
use super::{EmbedError, LoadError, Model};

/// What a model serves: which routes take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Text in, a vector out (`/v1/embeddings`, TEI's `/embed`).
    Embedding,
    /// A (query, document) pair in, a relevance score out (`/v1/rerank`).
    Rerank,
    /// A text or a pair in, a score per label out (TEI's `/predict`).
    Classification,
    /// Text in, a weight per vocabulary token out (TEI's `/embed_sparse`): SPLADE.
    #[serde(rename = "sparse-embedding")]
    SparseEmbedding,
}

/// What a model is, with what each kind needs to answer.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelKind {
    /// A dense embedder: its pooling and the modules after it are its pipeline's.
    Embedding,
    /// A sparse encoder: SPLADE, whose graph's masked-language-model logits pool by
    /// `splade`, or a sparse static table (no graph, no `splade`); at most
    /// `max_active_dims` non-zero weights per vector.
    SparseEmbedding {
        splade: Option<SpladePooling>,
        max_active_dims: Option<usize>,
    },
    /// A cross-encoder with one label: a relevance score per pair.
    Rerank(CrossEncoder),
    /// A sequence classifier: a score per label for a text or a pair.
    Classification(CrossEncoder),
}

impl ModelKind {
    /// The kind of the pipeline `st` describes, its files in `dir` (a model's folder, or one
    /// of a Router's routes).
    pub fn read(dir: &Path, st: &StConfig) -> Result<Self, LoadError> {
        if st.is_sparse() {
            return Ok(Self::SparseEmbedding {
                splade: st.sparse,
                max_active_dims: st.max_active_dims,
            });
        }
        Ok(Self::of_head(CrossEncoder::read(dir)?))
    }

    /// A reranker with one label, a classifier with more, an embedder without a head.
    fn of_head(head: Option<CrossEncoder>) -> Self {
        match head {
            Some(head) if head.labels.len() == 1 => Self::Rerank(head),
            Some(head) => Self::Classification(head),
            None => Self::Embedding,
        }
    }

    pub fn task(&self) -> Task {
        match self {
            Self::Embedding => Task::Embedding,
            Self::SparseEmbedding { .. } => Task::SparseEmbedding,
            Self::Rerank(_) => Task::Rerank,
            Self::Classification(_) => Task::Classification,
        }
    }

    /// A reranker's or classifier's head: its labels and activation.
    pub fn cross_encoder(&self) -> Option<&CrossEncoder> {
        match self {
            Self::Rerank(head) | Self::Classification(head) => Some(head),
            Self::Embedding | Self::SparseEmbedding { .. } => None,
        }
    }
}

impl Task {
    /// Of the folder's files alone, without loading anything (for `/v1/models`, which asks
    /// for every listed folder on every call): its module list, and a classifier's config. A
    /// Router model is sparse when a route is.
    pub fn of_dir(dir: &Path) -> Result<Self, LoadError> {
        let sparse = match RouterConfig::read(dir)? {
            Some(router) => router.is_sparse(),
            None => read_modules(dir)?.iter().any(ModuleEntry::is_sparse),
        };
        if sparse {
            return Ok(Self::SparseEmbedding);
        }
        Ok(ModelKind::of_head(CrossEncoder::read(dir)?).task())
    }
}

impl Model {
    /// What this model serves.
    pub fn task(&self) -> Task {
        self.kind.task()
    }

    /// The activation turning logits into scores, for cross-encoders.
    pub fn activation(&self) -> Option<Activation> {
        self.kind.cross_encoder().map(|c| c.activation)
    }

    /// `config.json`'s labels, for cross-encoders.
    pub fn labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.kind.cross_encoder().map(|c| &c.labels)
    }

    /// The classifier's head: its labels and how they are scored.
    pub(super) fn classifier(&self) -> Option<&CrossEncoder> {
        self.kind.cross_encoder()
    }

    /// Refuses a request of the wrong kind for this model, naming the route it belongs to.
    pub fn require(&self, task: Task) -> Result<(), EmbedError> {
        let served = match self.task() {
            Task::Embedding => "an embedding model; send it to POST /v1/embeddings",
            Task::Rerank => {
                "a reranker (cross-encoder): it scores (query, document) pairs; send it to \
                 POST /v1/rerank"
            }
            Task::Classification => {
                "a classifier: it scores a text or a pair against its labels; send it to \
                 POST /predict"
            }
            Task::SparseEmbedding => {
                "a sparse encoder (SPLADE): it gives a weight per vocabulary token; send it to \
                 POST /embed_sparse"
            }
        };
        let message = match task {
            asked if asked == self.task() => return Ok(()),
            Task::Embedding => format!("model `{}` has no embeddings: it is {served}", self.name),
            Task::Rerank => format!("model `{}` is not a reranker: it is {served}", self.name),
            Task::Classification => {
                format!("model `{}` is not a classifier: it is {served}", self.name)
            }
            Task::SparseEmbedding => {
                format!(
                    "model `{}` is not a sparse encoder: it is {served}",
                    self.name
                )
            }
        };
        Err(EmbedError::Invalid {
            param: "model",
            message,
        })
    }
}
