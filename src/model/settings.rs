//! A model's settings, as a `[[models]]` entry (or `--model`) gives them: the config module
//! reads them, the model uses them.

use std::time::Duration;

use serde::Deserialize;

use super::{Batching, InputType, ModelSource, PoolingMode, TokenInput};
use crate::batcher::BatchLimits;
use crate::runtime::Device;
use crate::units::byte_size;

/// One `[[models]]` entry: every per-model setting. After `Config::load` a model's entry
/// also holds the server-wide settings it did not override (`inherit`), and models found in
/// a models directory or on the Hub get `Config::model_defaults`: the loader reads nothing
/// else. A new per-model setting is a field here and the code that uses it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients send as `model`; defaults to the Hub id or the folder name.
    pub name: Option<String>,
    /// A local directory or a Hub id `org/name[@revision]`.
    pub source: ModelSource,
    /// ONNX file inside the model folder; `onnx/model.onnx` (else `model.onnx`) by default.
    pub onnx_file: Option<String>,
    pub pooling: Option<PoolingMode>,
    pub normalize: Option<bool>,
    pub max_seq_length: Option<usize>,
    /// `dynamic` shares runs between inputs; `isolated` runs each input alone. By default
    /// graphs that quantize activations per batch are isolated, others dynamic.
    pub batching: Option<Batching>,
    pub max_batch_size: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_queued_inputs: Option<usize>,
    /// How this model reads token-id input; `server.token_input` by default.
    pub token_input: Option<TokenInput>,
    /// Truncate inputs longer than `max_seq_length` (default), or refuse them with a 400.
    pub truncate: Option<bool>,
    /// `query` or `document`: what this name's texts are when a request does not say, for
    /// clients that cannot send `input_type` (an asymmetric model served as two names).
    pub input_type: Option<InputType>,
    /// Overrides `runtime.device` for this model.
    pub device: Option<Device>,
    /// Overrides `runtime.gpu_mem_limit` for this model.
    #[serde(deserialize_with = "byte_size")]
    pub gpu_mem_limit: Option<u64>,
    /// Other names that reach this model, e.g. `text-embedding-3-small`.
    pub aliases: Vec<String>,
    /// Load at start-up instead of on the first request.
    pub preload: bool,
    /// Never evict this model to make room for another.
    pub pin: bool,
    /// Overrides `cache.idle_timeout` for this model.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
}

impl ModelConfig {
    /// The name clients use when none is configured: the Hub id without its revision, or the
    /// folder's own name.
    pub fn effective_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match &self.source {
            ModelSource::Hub { repo, .. } => repo.clone(),
            ModelSource::Dir(dir) => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
        }
    }

    /// Takes the server-wide value of every setting this entry leaves unset.
    pub fn inherit(&mut self, defaults: &ModelConfig) {
        self.max_batch_size = self.max_batch_size.or(defaults.max_batch_size);
        self.max_batch_tokens = self.max_batch_tokens.or(defaults.max_batch_tokens);
        self.max_queued_inputs = self.max_queued_inputs.or(defaults.max_queued_inputs);
        self.token_input = self.token_input.or(defaults.token_input);
        self.device = self.device.or(defaults.device);
        self.gpu_mem_limit = self.gpu_mem_limit.or(defaults.gpu_mem_limit);
    }

    /// The batch limits on a CPU (`gpu = false`) or a GPU; unset ones are the device's
    /// defaults, known only once the model is loaded. On a CPU, 32 rows amortise a run and
    /// 16,384 padded tokens (32 rows of 512) keep activations bounded; on a GPU a run of 128
    /// costs little more than one of 32. The queue holds two full requests either way.
    pub fn batch_limits(&self, gpu: bool) -> BatchLimits {
        let (rows, tokens) = if gpu { (128, 65_536) } else { (32, 16_384) };
        BatchLimits {
            max_batch_size: self.max_batch_size.unwrap_or(rows),
            max_batch_tokens: self.max_batch_tokens.unwrap_or(tokens),
            max_queued_inputs: self.max_queued_inputs.unwrap_or(4096),
            // Measured on the CPU only (see `bulk_run_lengths`).
            run_cost_tokens: (!gpu).then_some(32),
        }
    }
}
