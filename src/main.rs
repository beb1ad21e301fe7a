//! The command line. Everything it runs lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use embedserve::config::{Config, Overrides};
use embedserve::runtime::Device;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "embedserve",
    version,
    about = "OpenAI-compatible embedding server for ONNX sentence-transformers models"
)]
struct Cli {
    /// Log lines as human-readable text or as JSON objects.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "EMBEDSERVE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve POST /v1/embeddings for the configured models.
    Serve(ServeArgs),
    /// Embed TEXTs with one model and print one JSON array per line; no server.
    Embed(EmbedArgs),
    /// Download a Hub model into the Hugging Face cache (HF_HOME) with a progress bar.
    Pull(PullArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see config/embedserve.toml).
    #[arg(long, env = "EMBEDSERVE_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "EMBEDSERVE_HOST")]
    host: Option<String>,
    /// 0 picks a free port and logs it.
    #[arg(long, env = "EMBEDSERVE_PORT")]
    port: Option<u16>,
    #[command(flatten)]
    models: ModelArgs,
    /// Most models loaded at once; the least recently used unpinned one is evicted first.
    #[arg(long, env = "EMBEDSERVE_MAX_LOADED_MODELS")]
    max_loaded_models: Option<usize>,
    /// Let requests load any Hub id, downloading it (off: only configured models and models
    /// directories).
    #[arg(long, env = "EMBEDSERVE_ALLOW_HUB_DOWNLOADS")]
    allow_hub_downloads: bool,
    /// Most inputs per ONNX Runtime run (per-model default).
    #[arg(long, env = "EMBEDSERVE_MAX_BATCH_SIZE")]
    max_batch_size: Option<usize>,
    /// Most padded tokens (rows × longest row) per run (per-model default).
    #[arg(long, env = "EMBEDSERVE_MAX_BATCH_TOKENS")]
    max_batch_tokens: Option<usize>,
    /// Most inputs waiting per model; beyond it requests get 429 (per-model default).
    #[arg(long, env = "EMBEDSERVE_MAX_QUEUED_INPUTS")]
    max_queued_inputs: Option<usize>,
    /// An API key clients must send as `Authorization: Bearer KEY` (repeatable).
    #[arg(
        long = "api-key",
        value_name = "KEY",
        env = "EMBEDSERVE_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Vec<String>,
    /// A file of API keys, one per line.
    #[arg(long, value_name = "PATH", env = "EMBEDSERVE_API_KEY_FILE")]
    api_key_file: Option<PathBuf>,
    /// Largest request body in bytes; larger requests get 413.
    #[arg(long, env = "EMBEDSERVE_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    #[command(flatten)]
    runtime: RuntimeArgs,
}

#[derive(Args)]
struct ModelArgs {
    /// A folder mirroring the Hub (`DIR/org/name`): every model in it is servable as `org/name`.
    #[arg(
        long = "models-dir",
        value_name = "DIR",
        env = "EMBEDSERVE_MODELS_DIR",
        value_delimiter = ':'
    )]
    models_dirs: Vec<PathBuf>,
    /// `SOURCE` or `NAME=SOURCE`; SOURCE is a Hub id `org/name[@revision]` or a folder.
    #[arg(
        long = "model",
        value_name = "SPEC",
        env = "EMBEDSERVE_MODEL",
        value_delimiter = ','
    )]
    models: Vec<String>,
}

#[derive(Args)]
struct RuntimeArgs {
    /// Path of libonnxruntime.so (ORT_DYLIB_PATH wins over it).
    #[arg(long, env = "EMBEDSERVE_ORT_LIBRARY")]
    ort_library: Option<PathBuf>,
    /// Intra-op threads shared by all models; all cores by default.
    #[arg(long, env = "EMBEDSERVE_INTRA_THREADS")]
    intra_threads: Option<usize>,
    /// Where models run: cpu, cuda, cuda:N, or auto (CUDA when it registers, else CPU).
    #[arg(long, env = "EMBEDSERVE_DEVICE")]
    device: Option<Device>,
}

#[derive(Args)]
struct EmbedArgs {
    #[arg(long, value_name = "SPEC")]
    model: String,
    #[arg(long = "models-dir", value_name = "DIR")]
    models_dirs: Vec<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeArgs,
    #[arg(required = true)]
    texts: Vec<String>,
}

#[derive(Args)]
struct PullArgs {
    /// Hub id `org/name[@revision]`.
    source: String,
    /// The ONNX graph to fetch (default: onnx/model.onnx, else a root model.onnx).
    #[arg(long)]
    onnx_file: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("EMBEDSERVE_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,ort=warn")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // After a shutdown deadline, work may still sit on the blocking pool: give it a moment,
    // not forever.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let overrides = Overrides {
                host: args.host,
                port: args.port,
                models_dirs: args.models.models_dirs,
                models: args.models.models,
                max_body_bytes: args.max_body_bytes,
                ort_library: args.runtime.ort_library,
                intra_threads: args.runtime.intra_threads,
                max_loaded_models: args.max_loaded_models,
                allow_hub_downloads: args.allow_hub_downloads,
                max_batch_size: args.max_batch_size,
                max_batch_tokens: args.max_batch_tokens,
                max_queued_inputs: args.max_queued_inputs,
                api_keys: args.api_keys,
                api_key_file: args.api_key_file,
                device: args.runtime.device,
            };
            embedserve::server::serve(Config::load(args.config.as_deref(), overrides)?).await
        }
        Command::Embed(args) => {
            let overrides = Overrides {
                models_dirs: args.models_dirs,
                models: vec![args.model],
                ort_library: args.runtime.ort_library,
                intra_threads: args.runtime.intra_threads,
                device: args.runtime.device,
                ..Overrides::default()
            };
            embedserve::commands::embed(Config::load(None, overrides)?, args.texts).await
        }
        Command::Pull(args) => {
            embedserve::commands::pull(&args.source, args.onnx_file.as_deref()).await
        }
    }
}
