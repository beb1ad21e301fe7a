//! A loaded model: its sentence-transformers configuration, tokenizer and ONNX session, and
//! the one path that turns inputs into the vectors sentence-transformers computes.

mod dense;
mod encoder;
mod head;
mod inputs;
mod pooling;
pub mod source;
mod st_config;
mod static_embedding;
mod tokenize;
mod weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use encoder::{Encoder, GraphOptions, OutputKind};
pub use inputs::{EmbedOptions, TokenInput, warm_up_tiktoken};
pub use pooling::{Pooling, PoolingMode, l2_normalize};
pub use source::{HubSettings, ModelSource};
pub use tokenize::TokenSeq;

use head::Head;
use st_config::{HeadModule, InputModule, StConfig};
use static_embedding::StaticEmbedding;
use tokenize::{TextPreparation, TextTokenizer};

use crate::batcher::{BatchError, BatchLimits, Batcher, Pending};
use crate::config::BatcherConfig;
use crate::metrics::METRICS;
use crate::runtime::{Device, Runtime};

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
}

/// One input of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Text(String),
    /// Ids of the model's own vocabulary, used as they are.
    Tokens(Vec<u32>),
}

/// How a model is to be loaded: where from, and the per-model overrides of its own files.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub name: String,
    pub source: ModelSource,
    pub onnx_file: Option<String>,
    pub pooling: Option<PoolingMode>,
    pub normalize: Option<bool>,
    pub max_seq_length: Option<usize>,
    pub batching: Option<Batching>,
    pub limits: BatchLimits,
    pub token_input: TokenInput,
    /// Truncate over-long inputs (else refuse them) unless a request says otherwise.
    pub truncate: bool,
    pub device: Device,
    /// Cap on the CUDA memory arena, in bytes.
    pub gpu_mem_limit: Option<u64>,
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

impl ModelSpec {
    pub fn new(name: impl Into<String>, source: ModelSource) -> Self {
        Self {
            name: name.into(),
            source,
            onnx_file: None,
            pooling: None,
            normalize: None,
            max_seq_length: None,
            batching: None,
            limits: BatcherConfig::default().limits(),
            token_input: TokenInput::default(),
            truncate: true,
            device: Device::Cpu,
            gpu_mem_limit: None,
        }
    }
}

/// What computes a model's vectors.
enum Engine {
    /// An ONNX graph, run on the model's batcher thread.
    Graph(Batcher),
    /// A static embedding table, looked up on the request's own blocking thread.
    Static(StaticEmbedding),
}

/// A request's vectors: computed already, or queued on the model's batcher.
pub enum Embedding {
    Ready(Vec<Vec<f32>>),
    Queued(Pending),
}

/// The graph probed at load: a word, since some tokenizers turn "" into no tokens at all.
const PROBE_TEXT: &str = "embedserve";

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
    engine: Engine,
}

impl Model {
    /// Loads a model from a local folder.
    pub fn load_dir(spec: &ModelSpec, dir: &Path, runtime: &Runtime) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::file(dir, "not a directory"));
        }
        let st = StConfig::read(dir)?;
        let head = Head::load(&head_modules(&st, spec.normalize))?;
        let mut model = match &st.input {
            InputModule::Transformer => Self::load_graph(spec, dir, runtime, &st, head)?,
            InputModule::Static(folder) => Self::load_static(spec, dir, folder, &st, head)?,
        };
        let what = match &model.onnx_file {
            Some(file) => dir.join(file),
            None => dir.to_path_buf(),
        };
        // One real run proves the model works end to end and tells its output width.
        let probe = model
            .embed_blocking(&[Input::Text(PROBE_TEXT.into())], None)
            .map_err(|e| LoadError::file(&what, format!("a test run failed: {e}")))?;
        model.dimension = probe[0].len();
        Ok(model)
    }

    fn load_graph(
        spec: &ModelSpec,
        dir: &Path,
        runtime: &Runtime,
        st: &StConfig,
        head: Head,
    ) -> Result<Self, LoadError> {
        let onnx_file = match &spec.onnx_file {
            Some(file) => file.clone(),
            None => source::DEFAULT_ONNX_FILES
                .into_iter()
                .find(|f| dir.join(f).is_file())
                .unwrap_or(source::DEFAULT_ONNX_FILES[0])
                .to_string(),
        };
        let onnx = dir.join(&onnx_file);
        if !onnx.is_file() {
            return Err(LoadError::file(
                &onnx,
                "missing (set `onnx_file` to choose another graph)",
            ));
        }
        let max_seq_length = spec.max_seq_length.or(st.max_seq_length).ok_or_else(|| {
            LoadError::Config(format!(
                "{}: cannot tell the maximum sequence length (no sentence_bert_config.json, \
                 tokenizer_config.json or config.json gives one); set `max_seq_length`",
                dir.display()
            ))
        })?;
        let pooling = spec.pooling.map(Pooling::single).or(st.pooling.clone());

        let tokenizer = TextTokenizer::load(
            &dir.join("tokenizer.json"),
            TextPreparation::Transformer {
                max_seq_length,
                do_lower_case: st.do_lower_case,
            },
        )?;
        let graph = GraphOptions {
            pooling,
            head,
            device: spec.device,
            gpu_mem_limit: spec.gpu_mem_limit,
        };
        let encoder = Encoder::load(runtime, &onnx, graph, tokenizer.pad_id)?;
        let device = encoder.device();
        tracing::info!(model = %spec.name, %device, "{} runs on {device}", spec.name);
        let embeds_empty = encoder.embeds_empty_sequences();
        let batching = spec.batching.unwrap_or_else(|| {
            if encoder.quantizes_activations() {
                Batching::Isolated
            } else {
                Batching::Dynamic
            }
        });
        tracing::info!(
            model = %spec.name,
            "batching {}: {}",
            match batching {
                Batching::Dynamic => "dynamic",
                Batching::Isolated => "isolated",
            },
            match (spec.batching, batching) {
                (Some(_), _) => "set in the configuration",
                (None, Batching::Isolated) =>
                    "the graph quantizes activations per run (DynamicQuantizeLinear), so batch-mates would change its vectors",
                (None, Batching::Dynamic) => "the graph's rows are independent of each other",
            }
        );
        // A GPU runs bigger batches at little extra cost: grow the defaults (not what the
        // configuration set) there.
        let limits = if matches!(device, Device::Cuda(_))
            && spec.limits == BatcherConfig::default().limits()
        {
            BatcherConfig::gpu_default().limits()
        } else {
            spec.limits
        };
        let limits = match batching {
            Batching::Dynamic => limits,
            Batching::Isolated => BatchLimits {
                max_batch_size: 1,
                ..limits
            },
        };
        let batcher = Batcher::start(&spec.name, encoder, limits)
            .map_err(|e| LoadError::Source(format!("cannot start the batcher thread: {e}")))?;
        let mut excluded_prompt_lengths = BTreeMap::new();
        if !st.include_prompt {
            for (name, prompt) in &st.prompts {
                let length = tokenizer
                    .prompt_length(prompt)
                    .map_err(|e| LoadError::file(dir.join("tokenizer.json"), e.to_string()))?;
                excluded_prompt_lengths.insert(name.clone(), length);
            }
        }
        let mut model = Self::common(spec, dir, st, tokenizer, Engine::Graph(batcher));
        model.onnx_file = Some(onnx_file);
        model.max_seq_length = Some(max_seq_length);
        model.excluded_prompt_lengths = excluded_prompt_lengths;
        model.embeds_empty = embeds_empty;
        Ok(model)
    }

    fn load_static(
        spec: &ModelSpec,
        dir: &Path,
        folder: &Path,
        st: &StConfig,
        head: Head,
    ) -> Result<Self, LoadError> {
        let tokenizer =
            TextTokenizer::load(&folder.join("tokenizer.json"), TextPreparation::Static)?;
        let table = StaticEmbedding::load(folder, head, tokenizer.vocab_size())?;
        tracing::info!(model = %spec.name, "{} is a static embedding table: no graph, no batcher", spec.name);
        let max_length = tokenizer.max_length();
        let mut model = Self::common(spec, dir, st, tokenizer, Engine::Static(table));
        model.max_seq_length = max_length;
        Ok(model)
    }

    /// The fields every kind of model sets alike.
    fn common(
        spec: &ModelSpec,
        dir: &Path,
        st: &StConfig,
        tokenizer: TextTokenizer,
        engine: Engine,
    ) -> Self {
        Self {
            name: spec.name.clone(),
            dir: dir.to_path_buf(),
            onnx_file: None,
            dimension: 0,
            max_seq_length: None,
            prompts: st.prompts.clone(),
            excluded_prompt_lengths: BTreeMap::new(),
            default_prompt_name: st.default_prompt_name.clone(),
            token_input: spec.token_input,
            truncate: spec.truncate,
            embeds_empty: true,
            tokenizer,
            engine,
        }
    }

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

    /// Tokenizes (and for static models embeds) on the calling thread, which must not be an
    /// async worker; graph models' inputs are queued on the batcher.
    pub fn start(
        &self,
        inputs: &[Input],
        options: &EmbedOptions,
    ) -> Result<(Embedding, usize), EmbedError> {
        let seqs = self.tokenize(inputs, options)?;
        let tokens: usize = seqs.iter().map(TokenSeq::len).sum();
        if tokens > options.max_tokens {
            return Err(EmbedError::Invalid {
                param: "input",
                message: format!(
                    "the inputs hold {tokens} tokens; at most {} are allowed per request \
                     (server.max_tokens_per_request): split them over several requests",
                    options.max_tokens
                ),
            });
        }
        let embedding = match &self.engine {
            Engine::Graph(batcher) => Embedding::Queued(batcher.submit(seqs)?),
            Engine::Static(table) => {
                let started = Instant::now();
                let vectors = table.embed(&seqs).map_err(BatchError::Inference)?;
                let model = [self.name.as_str()];
                METRICS
                    .inference_seconds
                    .with_label_values(&model)
                    .observe(started.elapsed().as_secs_f64());
                METRICS
                    .tokens
                    .with_label_values(&model)
                    .inc_by(tokens as u64);
                Embedding::Ready(vectors)
            }
        };
        Ok((embedding, tokens))
    }

    /// Tokenizes and embeds, blocking the calling thread (never an async worker).
    pub fn embed_blocking(
        &self,
        inputs: &[Input],
        prompt_name: Option<&str>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let options = EmbedOptions {
            prompt_name,
            ..EmbedOptions::default()
        };
        match self.start(inputs, &options)?.0 {
            Embedding::Ready(vectors) => Ok(vectors),
            Embedding::Queued(pending) => Ok(pending.wait_blocking()?.vectors),
        }
    }
}

/// The folder's modules after pooling, with the configuration's `normalize` applied: `true`
/// adds a final Normalize, `false` removes them.
fn head_modules(st: &StConfig, normalize: Option<bool>) -> Vec<HeadModule> {
    let mut modules = st.head.clone();
    match normalize {
        Some(false) => modules.retain(|m| *m != HeadModule::Normalize),
        Some(true) if !st.normalizes() => modules.push(HeadModule::Normalize),
        _ => {}
    }
    modules
}

impl Drop for Model {
    fn drop(&mut self) {
        tracing::info!(model = %self.name, "unloaded {}: its memory is released", self.name);
        return_freed_memory();
    }
}

/// Hands memory that the allocator keeps after a model is freed back to the OS, so that
/// resident memory (and the cache's memory budget) reflects the models really loaded.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_freed_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: glibc's malloc_trim only walks the allocator's own free lists.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_freed_memory() {}
