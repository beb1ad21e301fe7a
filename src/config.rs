//! The typed configuration: built-in defaults, then the TOML file, then command-line flags
//! (and their `EMBEDSERVE_*` environment variables, which clap reads as flag values).
//!
//! Every value is checked once, here, so the rest of the server can trust it; an invalid
//! file fails start-up with the key that is wrong and why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::batcher::BatchLimits;
use crate::model::{Batching, PoolingMode, TokenInput};
use crate::runtime::Device;

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
    pub max_body_bytes: usize,
    /// Most inputs in one request (OpenAI's limit is 2048).
    pub max_inputs_per_request: usize,
    /// Most tokens (as embedded, after truncation) in one request (OpenAI's is 300,000).
    pub max_tokens_per_request: usize,
    /// How token-id input is read unless a model says otherwise.
    pub token_input: TokenInput,
    /// Bearer keys accepted on the API routes; none means no authentication.
    pub api_keys: Vec<String>,
    /// A file with more keys, one per line.
    pub api_key_file: Option<PathBuf>,
    /// Require a key for /metrics too (health and readiness always stay open).
    pub protect_metrics: bool,
    /// Origins allowed by CORS; `["*"]` allows any. Empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// A request still running after this long gets 408 and its work is dropped.
    #[serde(deserialize_with = "duration_required")]
    pub request_timeout: Duration,
    /// On SIGTERM or SIGINT, how long in-flight requests may take to finish.
    #[serde(deserialize_with = "duration_required")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 8080,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_inputs_per_request: 2048,
            max_tokens_per_request: 300_000,
            token_input: TokenInput::default(),
            api_keys: Vec::new(),
            api_key_file: None,
            protect_metrics: false,
            cors_origins: Vec::new(),
            request_timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so`; `ORT_DYLIB_PATH` wins over it.
    pub library: Option<PathBuf>,
    /// Threads of the process-wide intra-op pool; all cores when unset.
    pub intra_threads: Option<usize>,
    /// Let idle intra-op threads spin waiting for work instead of sleeping.
    pub spinning: bool,
    /// Where models run unless they say otherwise: cpu, cuda, cuda:N or auto.
    pub device: Device,
    /// Cap on each model's CUDA memory arena, e.g. "4GiB".
    #[serde(deserialize_with = "byte_size")]
    pub gpu_mem_limit: Option<u64>,
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
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    /// Let requests load any Hub id (downloading it). Off: an unauthenticated client must not
    /// be able to fill the disk.
    pub allow_hub_downloads: bool,
    /// After a failed load, answer with that failure for this long before trying again.
    #[serde(deserialize_with = "duration_required")]
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

/// Server-wide batching defaults; each `[[models]]` entry may override them.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatcherConfig {
    pub max_batch_size: usize,
    pub max_batch_tokens: usize,
    pub max_queued_inputs: usize,
}

impl Default for BatcherConfig {
    fn default() -> Self {
        // 32 rows amortise a run on CPU; 16384 padded tokens is 32 rows of 512, so long
        // inputs batch less but activations stay bounded; the queue holds two full requests.
        Self {
            max_batch_size: 32,
            max_batch_tokens: 16_384,
            max_queued_inputs: 4096,
        }
    }
}

impl BatcherConfig {
    /// The defaults on a GPU, where a run of 128 costs little more than a run of 32.
    pub fn gpu_default() -> Self {
        Self {
            max_batch_size: 128,
            max_batch_tokens: 65_536,
            ..Self::default()
        }
    }

    pub fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_batch_size: self.max_batch_size,
            max_batch_tokens: self.max_batch_tokens,
            max_queued_inputs: self.max_queued_inputs,
        }
    }

    /// These defaults with a model's overrides.
    pub fn for_model(&self, model: &ModelConfig) -> BatchLimits {
        BatchLimits {
            max_batch_size: model.max_batch_size.unwrap_or(self.max_batch_size),
            max_batch_tokens: model.max_batch_tokens.unwrap_or(self.max_batch_tokens),
            max_queued_inputs: model.max_queued_inputs.unwrap_or(self.max_queued_inputs),
        }
    }
}

/// One `[[models]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// The name clients send as `model`; defaults to the Hub id or the folder name.
    pub name: Option<String>,
    /// A local directory or a Hub id `org/name[@revision]`.
    pub source: String,
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
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
}

impl ModelConfig {
    /// Parses a command-line `SPEC`: `SOURCE` or `NAME=SOURCE`. Models named on the command
    /// line are preloaded: the operator asked for them by name.
    pub fn from_spec(spec: &str) -> Result<Self, ConfigError> {
        let (name, source) = match spec.split_once('=') {
            Some((name, source)) => (Some(name.trim().to_string()), source.trim()),
            None => (None, spec.trim()),
        };
        if source.is_empty() || name.as_deref() == Some("") {
            return Err(ConfigError::invalid(
                "--model",
                format!("`{spec}` is not SOURCE or NAME=SOURCE"),
            ));
        }
        Ok(Self {
            name,
            source: source.to_string(),
            preload: true,
            ..Self::default()
        })
    }

    /// The name clients use when none is configured: the Hub id without its revision, or the
    /// folder's own name.
    pub fn effective_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        let source = self.source.split('@').next().unwrap_or(&self.source);
        if Path::new(source).is_dir() || source.starts_with(['.', '/', '~']) {
            let trimmed = source.trim_end_matches('/');
            return Path::new(trimmed)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| trimmed.to_string());
        }
        source.to_string()
    }
}

/// What the command line adds on top of the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub models_dirs: Vec<PathBuf>,
    pub models: Vec<String>,
    pub max_body_bytes: Option<usize>,
    pub ort_library: Option<PathBuf>,
    pub intra_threads: Option<usize>,
    pub max_loaded_models: Option<usize>,
    pub allow_hub_downloads: bool,
    pub max_batch_size: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub max_queued_inputs: Option<usize>,
    pub api_keys: Vec<String>,
    pub api_key_file: Option<PathBuf>,
    pub device: Option<Device>,
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

impl Config {
    /// Reads `path` (or starts from the defaults), applies the overrides and validates.
    pub fn load(path: Option<&Path>, overrides: Overrides) -> Result<Self, ConfigError> {
        let mut config = match path {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply(overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        // Paths in a config file mean what they say from where the file lives, not from
        // wherever the server happens to be started.
        let base = path.parent().unwrap_or(Path::new("."));
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        config.models_dirs.iter_mut().for_each(rebase);
        config.runtime.library.as_mut().map(rebase);
        config.server.api_key_file.as_mut().map(rebase);
        for model in &mut config.models {
            if model.source.starts_with("./") || model.source.starts_with("../") {
                model.source = base.join(&model.source).to_string_lossy().into_owned();
            }
        }
        Ok(config)
    }

    fn apply(&mut self, o: Overrides) -> Result<(), ConfigError> {
        if let Some(host) = o.host {
            self.server.host = host;
        }
        if let Some(port) = o.port {
            self.server.port = port;
        }
        if let Some(bytes) = o.max_body_bytes {
            self.server.max_body_bytes = bytes;
        }
        if let Some(library) = o.ort_library {
            self.runtime.library = Some(library);
        }
        if let Some(threads) = o.intra_threads {
            self.runtime.intra_threads = Some(threads);
        }
        if let Some(max) = o.max_loaded_models {
            self.cache.max_loaded_models = max;
        }
        self.cache.allow_hub_downloads |= o.allow_hub_downloads;
        if let Some(n) = o.max_batch_size {
            self.batcher.max_batch_size = n;
        }
        if let Some(n) = o.max_batch_tokens {
            self.batcher.max_batch_tokens = n;
        }
        if let Some(n) = o.max_queued_inputs {
            self.batcher.max_queued_inputs = n;
        }
        if let Some(device) = o.device {
            self.runtime.device = device;
        }
        self.server.api_keys.extend(o.api_keys);
        if let Some(file) = o.api_key_file {
            self.server.api_key_file = Some(file);
        }
        if let Some(file) = self.server.api_key_file.take() {
            let text = std::fs::read_to_string(&file).map_err(|e| {
                ConfigError::invalid(
                    "server.api_key_file",
                    format!("cannot read {}: {e}", file.display()),
                )
            })?;
            self.server.api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(String::from),
            );
        }
        self.models_dirs.extend(o.models_dirs);
        for spec in &o.models {
            self.models.push(ModelConfig::from_spec(spec)?);
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.host.trim().is_empty() {
            return Err(ConfigError::invalid("server.host", "must not be empty"));
        }
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::invalid(
                "server.max_body_bytes",
                "must be at least 1",
            ));
        }
        if self.runtime.intra_threads == Some(0) {
            return Err(ConfigError::invalid(
                "runtime.intra_threads",
                "must be at least 1 (leave it unset to use every core)",
            ));
        }
        if self.server.api_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "server.api_keys",
                "an API key must not be empty",
            ));
        }
        let positive = [
            (
                "server.max_inputs_per_request",
                Some(self.server.max_inputs_per_request),
            ),
            (
                "server.max_tokens_per_request",
                Some(self.server.max_tokens_per_request),
            ),
            ("batcher.max_batch_size", Some(self.batcher.max_batch_size)),
            (
                "batcher.max_batch_tokens",
                Some(self.batcher.max_batch_tokens),
            ),
            (
                "batcher.max_queued_inputs",
                Some(self.batcher.max_queued_inputs),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(self.models.iter().enumerate().flat_map(|(i, m)| {
            [
                (format!("models[{i}].max_batch_size"), m.max_batch_size),
                (format!("models[{i}].max_batch_tokens"), m.max_batch_tokens),
                (
                    format!("models[{i}].max_queued_inputs"),
                    m.max_queued_inputs,
                ),
            ]
        }));
        for (key, value) in positive {
            if value == Some(0) {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        let pinned = self.models.iter().filter(|m| m.pin).count();
        if pinned > self.cache.max_loaded_models {
            return Err(ConfigError::invalid(
                "cache.max_loaded_models",
                format!(
                    "{pinned} models are pinned but at most {} may be loaded",
                    self.cache.max_loaded_models
                ),
            ));
        }
        let mut owners: HashMap<String, String> = HashMap::new();
        for (i, model) in self.models.iter().enumerate() {
            let key = format!("models[{i}]");
            if model.source.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("{key}.source"),
                    "is required: a local directory or a Hub id `org/name`",
                ));
            }
            if model.max_seq_length == Some(0) {
                return Err(ConfigError::invalid(
                    format!("{key}.max_seq_length"),
                    "must be at least 1",
                ));
            }
            let names = std::iter::once((format!("{key}.name"), model.effective_name())).chain(
                model
                    .aliases
                    .iter()
                    .enumerate()
                    .map(|(j, a)| (format!("{key}.aliases[{j}]"), a.clone())),
            );
            for (name_key, name) in names {
                if name.trim().is_empty() {
                    return Err(ConfigError::invalid(name_key, "must not be empty"));
                }
                if let Some(owner) = owners.insert(name.clone(), name_key.clone()) {
                    return Err(ConfigError::invalid(
                        name_key,
                        format!("`{name}` is already used by `{owner}`"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// "30s", "10m", "1h 30m" (humantime's syntax).
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration like \"30s\" or \"10m\": {e}"))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration_required(d).map(Some)
}

fn duration_required<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// "512MiB", "2GiB", "1.5GB" or a plain number of bytes.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "`{text}` is not a size like \"512MiB\" or \"2GiB\""
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like \"512MiB\" or \"2GiB\""))?;
    Ok((value * factor as f64) as u64)
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    parse_byte_size(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("embedserve.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), Overrides::default())
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[server]\nhots = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("hots"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = parse("[server]\nport = \"eighty\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("port"), "{err}");
    }

    #[test]
    fn duplicate_names_are_rejected_with_both_keys() {
        let err = parse(
            "[[models]]\nsource = \"a/b\"\n[[models]]\nsource = \"c/d\"\naliases = [\"a/b\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("models[1].aliases[0]"), "{err}");
        assert!(err.contains("models[0].name"), "{err}");
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_byte_size("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert!(parse_byte_size("lots").is_err());
        let config =
            parse("[cache]\nidle_timeout = \"10m\"\nmax_model_memory = \"512MiB\"\n").unwrap();
        assert_eq!(config.cache.idle_timeout, Some(Duration::from_secs(600)));
        assert_eq!(config.cache.max_model_memory, Some(512 << 20));
        let err = parse("[cache]\nidle_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("idle_timeout") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn more_pins_than_room_is_rejected() {
        let err = parse("[cache]\nmax_loaded_models = 1\n[[models]]\nsource = \"a/b\"\npin = true\n[[models]]\nsource = \"c/d\"\npin = true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cache.max_loaded_models"), "{err}");
    }

    #[test]
    fn unknown_pooling_mode_is_rejected() {
        let err = parse("[[models]]\nsource = \"a/b\"\npooling = \"median\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("median"), "{err}");
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let config = parse("models_dirs = [\"models\"]\n").unwrap();
        assert!(config.models_dirs[0].is_absolute());
        assert!(config.models_dirs[0].ends_with("models"));
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nport = 1234\nhost = \"0.0.0.0\"\n").unwrap();
        let overrides = Overrides {
            port: Some(0),
            models: vec!["mini=org/model@v2".into()],
            ..Overrides::default()
        };
        let config = Config::load(Some(&path), overrides).unwrap();
        assert_eq!(config.server.port, 0);
        assert_eq!(config.server.host, "0.0.0.0");
        assert_eq!(config.models[0].effective_name(), "mini");
        assert_eq!(config.models[0].source, "org/model@v2");
        assert!(config.models[0].preload);
    }

    #[test]
    fn spec_names_default_to_the_hub_id_or_folder() {
        assert_eq!(
            ModelConfig::from_spec("org/name@rev")
                .unwrap()
                .effective_name(),
            "org/name"
        );
        assert_eq!(
            ModelConfig::from_spec("./models/my-model/")
                .unwrap()
                .effective_name(),
            "my-model"
        );
        assert!(ModelConfig::from_spec("name=").is_err());
    }
}
