//! The typed configuration: built-in defaults, then the TOML file, then command-line flags
//! (and their `EMBEDSERVE_*` environment variables, which clap reads as flag values).
//!
//! Every value is checked once (`load`), so the rest of the server can trust it; an invalid
//! file fails start-up with the key that is wrong and why. This file holds the settings and
//! their defaults.

mod load;
mod overrides;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{byte_size, bytes};
pub use overrides::{BatchFlags, CacheFlags, ModelFlags, Overrides, RuntimeFlags, ServerFlags};

pub use crate::model::ModelConfig;
use crate::model::{ModelSource, TokenInput};
pub use crate::runtime::RuntimeConfig;

/// Largest request body accepted unless configured otherwise: room for LangChain's batches of
/// 1000 token-id arrays, small enough that one client cannot exhaust memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub runtime: RuntimeConfig,
    pub cache: CacheConfig,
    pub batcher: BatcherConfig,
    pub batches: BatchesConfig,
    /// Mirrors laid out as `DIR/org/name/...`: every model in them is servable as `org/name`.
    pub models_dirs: Vec<PathBuf>,
    pub models: Vec<ModelConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port; the server logs the one it got.
    pub port: u16,
    /// A file the server writes its port to once it accepts connections, for scripts and
    /// tests that start it on port 0.
    pub port_file: Option<PathBuf>,
    pub max_body_bytes: usize,
    /// Most inputs in one request (OpenAI's limit is 2048).
    pub max_inputs_per_request: usize,
    /// Most tokens (as embedded, after truncation) in one request (OpenAI's is 300,000).
    pub max_tokens_per_request: usize,
    /// How token-id input is read unless a model says otherwise.
    pub token_input: TokenInput,
    /// The model of requests that name none (TEI's routes, where `model` is optional).
    /// Unset: the one configured model, if there is exactly one.
    pub default_model: Option<String>,
    /// Bearer keys accepted on the API routes; none means no authentication.
    pub api_keys: Vec<String>,
    /// A file with more keys, one per line.
    pub api_key_file: Option<PathBuf>,
    /// Require a key for /metrics too (health and readiness always stay open).
    pub protect_metrics: bool,
    /// Origins allowed by CORS; `["*"]` allows any. Empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Compress responses (gzip, deflate, zstd, at their fastest level) for clients that
    /// accept it. Off: vectors compress poorly and cost more CPU than a LAN saves.
    pub compress_responses: bool,
    /// A request still running after this long gets 408 and its work is dropped.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// On SIGTERM or SIGINT, how long the server keeps serving with `/ready` at 503, so
    /// load balancers stop sending before the listener closes.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// After the drain delay, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Most client connections open at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send a request's head, from connecting (or from its
    /// first byte after an idle spell).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// How long a connection may idle between requests before it is closed.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Most connections open at once from one client address; 0: no bound (the right
    /// setting behind a proxy or load balancer, where every client has its address).
    pub max_connections_per_ip: usize,
    /// How long a request's body may take to arrive once its head has; slower ones get 408.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Most bytes that request bodies being read and parsed may hold at once, all
    /// connections together, counted as they arrive; a body that finds no room (for its
    /// first 64 KiB within `body_timeout`, at once for the rest) gets 503.
    #[serde(deserialize_with = "bytes")]
    pub body_buffer_budget: u64,
    /// Where uploaded files, batch jobs and their results live (the Files and Batch API);
    /// without it those routes answer 404.
    pub data_dir: Option<PathBuf>,
    /// This replica's name in a fleet (in Kubernetes, its pod's): the ids of its files and
    /// batches carry it, and it answers in every response's `X-Embedserve-Replica`, so the
    /// router sends every call about them here. A DNS label: lowercase letters, digits, `-`.
    pub replica_name: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            port_file: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_inputs_per_request: 2048,
            max_tokens_per_request: 300_000,
            token_input: TokenInput::default(),
            default_model: None,
            api_keys: Vec::new(),
            api_key_file: None,
            protect_metrics: false,
            cors_origins: Vec::new(),
            compress_responses: false,
            request_timeout: Duration::from_secs(300),
            drain_delay: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(30),
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            max_connections_per_ip: 0,
            body_timeout: Duration::from_secs(10),
            body_buffer_budget: 16 * DEFAULT_MAX_BODY_BYTES as u64,
            data_dir: None,
            replica_name: None,
        }
    }
}

/// OpenAI's Files and Batch API: its limits, and how batch work yields to requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchesConfig {
    /// Largest uploaded file (OpenAI: 200 MB).
    #[serde(deserialize_with = "bytes")]
    pub max_file_bytes: u64,
    /// Most request lines in one batch's input file (OpenAI: 50,000).
    pub max_requests_per_batch: usize,
    /// Most bytes that files and batch results may hold in `server.data_dir`, all keys
    /// together; an upload or a batch result past it is refused.
    #[serde(deserialize_with = "bytes")]
    pub max_disk_bytes: u64,
    /// How long files are kept (uploads and results), e.g. "30d".
    #[serde(with = "humantime_serde")]
    pub file_ttl: Duration,
    /// How long a batch may run before the lines it has not run expire. Clients ask for
    /// OpenAI's only window, `24h`; this is what the server holds them to.
    #[serde(with = "humantime_serde")]
    pub expire_after: Duration,
    /// Batch lines start only once no request has run for this long: batch work takes the
    /// capacity that requests leave.
    #[serde(with = "humantime_serde")]
    pub idle_gap: Duration,
    /// Lines of a batch sent to the model at once, so its batcher fills whole runs.
    pub lines_in_flight: usize,
    /// Most batches not yet over, all keys together; creating one more is a 429.
    pub max_active_batches: usize,
}

impl Default for BatchesConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 200_000_000,
            max_requests_per_batch: 50_000,
            max_disk_bytes: 10 << 30,
            file_ttl: Duration::from_secs(30 * 24 * 3600),
            expire_after: Duration::from_secs(24 * 3600),
            idle_gap: Duration::from_millis(20),
            lines_in_flight: 64,
            max_active_batches: 100,
        }
    }
}

/// Bounds of the model cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Most models loaded at once; the least recently used unpinned one goes first.
    pub max_loaded_models: usize,
    /// Most memory that loaded models may add to the process, e.g. "2GiB".
    #[serde(deserialize_with = "byte_size")]
    pub max_model_memory: Option<u64>,
    /// Unload a model nobody used for this long, e.g. "30m".
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// Let requests load any Hub id (downloading it). Off: an unauthenticated client must not
    /// be able to fill the disk.
    pub allow_hub_downloads: bool,
    /// After a failed load, answer with that failure for this long before trying again.
    #[serde(with = "humantime_serde")]
    pub load_failure_backoff: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            max_loaded_models: 4,
            max_model_memory: None,
            idle_timeout: None,
            allow_hub_downloads: false,
            load_failure_backoff: Duration::from_secs(5),
        }
    }
}

/// Server-wide batch limits; each `[[models]]` entry may override them. Unset, they take the
/// defaults of the device the model runs on (`ModelConfig::batch_limits`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatcherConfig {
    pub max_batch_size: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_queued_inputs: Option<usize>,
}

impl Config {
    /// The settings of a model without a `[[models]]` entry: the server-wide ones.
    pub fn model_defaults(&self) -> ModelConfig {
        ModelConfig {
            max_batch_size: self.batcher.max_batch_size,
            max_batch_tokens: self.batcher.max_batch_tokens,
            max_queued_inputs: self.batcher.max_queued_inputs,
            token_input: Some(self.server.token_input),
            device: Some(self.runtime.device),
            gpu_mem_limit: self.runtime.gpu_mem_limit,
            ..ModelConfig::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Parses the `SPEC` of command-line `flag` (named in errors): `SOURCE` or
/// `NAME=SOURCE`. Models named on the command line are preloaded: the operator asked for
/// them by name.
pub fn model_from_spec(flag: &str, spec: &str) -> Result<ModelConfig, ConfigError> {
    let (name, source) = match spec.split_once('=') {
        Some((name, source)) => (Some(name.trim().to_string()), source.trim()),
        None => (None, spec.trim()),
    };
    if source.is_empty() || name.as_deref() == Some("") {
        return Err(ConfigError::invalid(
            flag,
            format!("`{spec}` is not SOURCE or NAME=SOURCE"),
        ));
    }
    let source = ModelSource::parse(source).map_err(|e| ConfigError::invalid(flag, e))?;
    Ok(ModelConfig {
        name,
        source,
        preload: true,
        ..ModelConfig::default()
    })
}
