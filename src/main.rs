//! The command line. Everything it runs lives in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use embedserve::config::{Config, ModelFlags, Overrides, RuntimeFlags};
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
    Serve(Box<ServeArgs>),
    /// Embed TEXTs with one model and print one JSON array per line; no server.
    Embed(EmbedArgs),
    /// Download a Hub model into the Hugging Face cache (HF_HOME) with a progress bar.
    Pull(PullArgs),
    /// Run a file of OpenAI batch requests (JSONL) with one model; no server. Run the same
    /// command again after a crash to resume.
    Batch(BatchArgs),
}

/// The one model a subcommand without a server runs.
#[derive(Args)]
struct OneModel {
    /// `SOURCE` or `NAME=SOURCE`; SOURCE is a Hub id `org/name[@revision]` or a folder.
    #[arg(long, value_name = "SPEC")]
    model: String,
    /// A folder mirroring the Hub (`DIR/org/name`).
    #[arg(long = "models-dir", value_name = "DIR")]
    models_dirs: Vec<PathBuf>,
    #[command(flatten)]
    runtime: RuntimeFlags,
}

impl OneModel {
    fn config(self) -> anyhow::Result<Config> {
        let overrides = Overrides {
            models: ModelFlags {
                models_dirs: self.models_dirs,
                models: vec![self.model],
                ..ModelFlags::default()
            },
            runtime: self.runtime,
            ..Overrides::default()
        };
        Ok(Config::load(None, overrides)?)
    }
}

#[derive(Args)]
struct BatchArgs {
    /// The model; lines that name none are for it.
    #[command(flatten)]
    model: OneModel,
    /// One request per line: `{"custom_id", "method": "POST", "url": "/v1/embeddings", "body"}`.
    input: PathBuf,
    /// Where the results go; failed lines go to OUTPUT.errors.jsonl.
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see config/embedserve.toml).
    #[arg(long, env = "EMBEDSERVE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

#[derive(Args)]
struct EmbedArgs {
    #[command(flatten)]
    model: OneModel,
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
    // SAFETY: no other thread exists yet.
    unsafe { embedserve::runtime::disable_telemetry() };
    embedserve::memory::configure();
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
            let config = Config::load(args.config.as_deref(), args.overrides)?;
            embedserve::server::serve(config).await
        }
        Command::Embed(args) => embedserve::commands::embed(args.model.config()?, args.texts).await,
        Command::Batch(args) => {
            let config = args.model.config()?;
            embedserve::commands::batch(config, &args.input, &args.output).await
        }
        Command::Pull(args) => {
            embedserve::commands::pull(&args.source, args.onnx_file.as_deref()).await
        }
    }
}
