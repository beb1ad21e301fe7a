//! The command line's settings, each also read from its `EMBEDSERVE_*` variable: flattened
//! into `embedserve serve` as they are, and applied over the file by `Config::load`.

use std::path::PathBuf;

use clap::Args;

use crate::runtime::{Device, Spinning};

/// What the command line adds on top of the file.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    #[command(flatten)]
    pub server: ServerFlags,
    #[command(flatten)]
    pub models: ModelFlags,
    #[command(flatten)]
    pub cache: CacheFlags,
    #[command(flatten)]
    pub batcher: BatchFlags,
    #[command(flatten)]
    pub runtime: RuntimeFlags,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Server")]
pub struct ServerFlags {
    #[arg(long, env = "EMBEDSERVE_HOST")]
    pub host: Option<String>,
    /// 0 picks a free port and logs it.
    #[arg(long, env = "EMBEDSERVE_PORT")]
    pub port: Option<u16>,
    /// Write the port the server listens on to this file once it accepts connections.
    #[arg(long, value_name = "PATH", env = "EMBEDSERVE_PORT_FILE")]
    pub port_file: Option<PathBuf>,
    /// Largest request body in bytes; larger requests get 413.
    #[arg(long, env = "EMBEDSERVE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// An API key clients must send as `Authorization: Bearer KEY` (repeatable).
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "EMBEDSERVE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// A file of API keys, one per line.
    #[arg(long, value_name = "PATH", env = "EMBEDSERVE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Most client connections open at once.
    #[arg(long, env = "EMBEDSERVE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one client address (0: no bound; keep it 0
    /// behind a proxy).
    #[arg(long, env = "EMBEDSERVE_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// On SIGTERM or SIGINT, how long to keep serving with /ready at 503 (e.g. `5s`).
    #[arg(long, value_name = "DURATION", env = "EMBEDSERVE_DRAIN_DELAY", value_parser = humantime::parse_duration)]
    pub drain_delay: Option<std::time::Duration>,
    /// The model of requests that name none (TEI's routes, where `model` is optional).
    #[arg(long, value_name = "MODEL", env = "EMBEDSERVE_DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Where the Files and Batch API keep files and jobs (off without it).
    #[arg(long, value_name = "DIR", env = "EMBEDSERVE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// This replica's name in a fleet, carried by its file and batch ids (a DNS label).
    #[arg(long, value_name = "NAME", env = "EMBEDSERVE_REPLICA_NAME")]
    pub replica_name: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Models")]
pub struct ModelFlags {
    /// A folder mirroring the Hub (`DIR/org/name`): every model in it is servable as `org/name`.
    #[arg(
        long = "models-dir",
        value_name = "DIR",
        env = "EMBEDSERVE_MODELS_DIR",
        value_delimiter = ':'
    )]
    pub models_dirs: Vec<PathBuf>,
    /// `SOURCE` or `NAME=SOURCE`, preloaded; SOURCE is a Hub id `org/name[@revision]` or a
    /// folder.
    #[arg(
        long = "model",
        value_name = "SPEC",
        env = "EMBEDSERVE_MODEL",
        value_delimiter = ','
    )]
    pub models: Vec<String>,
    /// A model that is preloaded and never evicted (repeatable): the name of a configured
    /// model, or a SPEC as for --model.
    #[arg(
        long = "pin",
        value_name = "MODEL",
        env = "EMBEDSERVE_PIN",
        value_delimiter = ','
    )]
    pub pins: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Model cache")]
pub struct CacheFlags {
    /// Most models loaded at once; the least recently used unpinned one is evicted first.
    #[arg(long, env = "EMBEDSERVE_MAX_LOADED_MODELS")]
    pub max_loaded_models: Option<usize>,
    /// Let requests load any Hub id, downloading it (off: only configured models and models
    /// directories).
    #[arg(long, env = "EMBEDSERVE_ALLOW_HUB_DOWNLOADS")]
    pub allow_hub_downloads: bool,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Batching (defaults of every model)")]
pub struct BatchFlags {
    /// Most inputs per ONNX Runtime run.
    #[arg(long, env = "EMBEDSERVE_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// Most padded tokens (rows × longest row) per run.
    #[arg(long, env = "EMBEDSERVE_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Most inputs waiting per model; beyond it requests get 429.
    #[arg(long, env = "EMBEDSERVE_MAX_QUEUED_INPUTS")]
    pub max_queued_inputs: Option<usize>,
}

#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "ONNX Runtime")]
pub struct RuntimeFlags {
    /// Path of libonnxruntime.so (ORT_DYLIB_PATH wins over it).
    #[arg(long, env = "EMBEDSERVE_ORT_LIBRARY")]
    pub ort_library: Option<PathBuf>,
    /// Intra-op threads of a run; all cores by default.
    #[arg(long, env = "EMBEDSERVE_INTRA_THREADS")]
    pub intra_threads: Option<usize>,
    /// When intra-op threads busy-wait for work: adaptive (unless other processes take the
    /// cores the runs need), always, never.
    #[arg(long, env = "EMBEDSERVE_SPINNING")]
    pub spinning: Option<Spinning>,
    /// Where models run: cpu, cuda, cuda:N, or auto (CUDA when it registers, else CPU).
    #[arg(long, env = "EMBEDSERVE_DEVICE")]
    pub device: Option<Device>,
}
