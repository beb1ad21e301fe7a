//! Finding and initialising ONNX Runtime: one environment per process, telemetry off, and
//! the session options every model gets: full graph optimisation, and an intra-op pool whose
//! threads spin as `runtime.spinning` says (see `Spinning`); and each device's turns
//! (`scheduler`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use parking_lot::Mutex;

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::ep;
use ort::session::{Session, builder::GraphOptimizationLevel, builder::SessionBuilder};

use serde::Deserialize;

use crate::scheduler::{Lane, RunScheduler};
use crate::units::byte_size;

/// The file name `scripts/fetch-onnxruntime` installs under `.onnxruntime/`.
const LIBRARY_NAME: &str = "libonnxruntime.so";
const FETCH_HINT: &str = "run `scripts/fetch-onnxruntime` (it installs the official build into \
     .onnxruntime/), or point ORT_DYLIB_PATH or `runtime.library` at libonnxruntime.so";

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("ONNX Runtime library not found (looked for {looked}); {FETCH_HINT}")]
    NotFound { looked: String },
    #[error("cannot load ONNX Runtime from {path}: {reason}; {FETCH_HINT}")]
    Load { path: PathBuf, reason: String },
    #[error("cannot initialise ONNX Runtime: {0}")]
    Init(#[from] ort::Error),
}

/// The `[runtime]` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Path of `libonnxruntime.so`; `ORT_DYLIB_PATH` wins over it.
    pub library: Option<PathBuf>,
    /// Intra-op threads of a run; all cores when unset.
    pub intra_threads: Option<usize>,
    /// When intra-op threads busy-wait for work: adaptive, always or never.
    pub spinning: Spinning,
    /// Where models run unless they say otherwise: cpu, cuda, cuda:N or auto.
    pub device: Device,
    /// Cap on each model's CUDA memory arena, e.g. "4GiB".
    #[serde(deserialize_with = "byte_size")]
    pub gpu_mem_limit: Option<u64>,
}

/// The process's ONNX Runtime, and how the sessions built from it use threads.
#[derive(Clone)]
pub struct Runtime {
    environment: Environment,
    intra_threads: usize,
    spinning: Spinning,
    /// Sessions get a pool of their own, spinning so, whatever the configuration.
    own_pool: Option<Spinning>,
    /// Each device's turns, shared by every model that runs there (`scheduler`).
    devices: Arc<Mutex<HashMap<Device, Arc<RunScheduler>>>>,
}

impl Runtime {
    pub fn init(config: &RuntimeConfig) -> Result<Self, RuntimeError> {
        let library = find_library(config.library.as_deref())?;
        preload_cuda_libraries(&library);
        let builder = ort::init_from(&library).map_err(|e| RuntimeError::Load {
            path: library.clone(),
            reason: e.to_string(),
        })?;
        let intra_threads = config
            .intra_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        // Under `always` and `never` every CPU session runs on one process-wide pool, so
        // that the threads of the model that ran last never spin beside the next one's run.
        // `adaptive` gives each session a pool of its own: ONNX Runtime stops only those
        // from spinning at a run's end (`session.force_spinning_stop`), so an idle model's
        // threads sleep; and it fixes a pool's spinning when it is built, so a session
        // follows the machine's load by being rebuilt (`model::respin`). A process-wide
        // pool that spins was tried for `adaptive`: three models at concurrency 1 each ran
        // 1.2x as fast, but one at concurrency 64 0.88x (the pool spins after every run).
        let builder = builder.with_name("embedserve").with_telemetry(false);
        let builder = if shares_pool(config.spinning) {
            builder.with_global_thread_pool(
                GlobalThreadPoolOptions::default()
                    .with_intra_threads(intra_threads)?
                    .with_inter_threads(1)?
                    .with_spin_control(config.spinning == Spinning::Always)?,
            )
        } else {
            builder
        };
        let environment = builder.build()?;
        tracing::info!(
            library = %library.display(),
            intra_threads,
            spinning = %config.spinning,
            "ONNX Runtime ready"
        );
        Ok(Self {
            environment,
            intra_threads,
            spinning: config.spinning,
            own_pool: None,
            devices: Arc::default(),
        })
    }

    /// A model's place in the turns of the device it runs on.
    pub fn lane(&self, device: Device, model: &str) -> Lane {
        self.devices.lock().entry(device).or_default().lane(model)
    }

    pub fn spinning(&self) -> Spinning {
        self.spinning
    }

    /// The same runtime, building sessions with a pool of their own that spins as
    /// `spinning` says (`adaptive`: inside runs only, stopping at each run's end): for a
    /// session rebuilt to follow the machine's load, and benchmarks that compare the modes.
    pub fn with_own_pool(&self, spinning: Spinning) -> Self {
        Self {
            own_pool: Some(spinning),
            ..self.clone()
        }
    }

    /// A session builder with the server's defaults (full graph optimisation, the pool as
    /// `runtime.spinning` and `with_own_pool` say) on `device`, and the device it really got:
    /// `auto` falls back to the CPU when the CUDA provider does not register, an explicit
    /// `cuda` fails with the reason.
    pub fn session_builder(
        &self,
        device: Device,
        gpu_mem_limit: Option<u64>,
    ) -> Result<(SessionBuilder, Device), String> {
        let builder = Session::builder(&self.environment)
            .and_then(|b| Ok(b.with_optimization_level(GraphOptimizationLevel::All)?))
            .and_then(|b| match self.own_pool {
                Some(spinning) => self.own_pool(b, spinning),
                None if shares_pool(self.spinning) => Ok(b),
                None => self.own_pool(b, self.spinning),
            })
            .map_err(|e| e.to_string())?;
        let cuda = |id: i32| {
            let mut cuda = ep::CUDA::default().with_device_id(id);
            if let Some(limit) = gpu_mem_limit {
                cuda = cuda.with_memory_limit(limit as usize);
            }
            [cuda.build().error_on_failure()]
        };
        match device {
            Device::Cpu => Ok((builder, Device::Cpu)),
            Device::Cuda(id) => match builder.with_execution_providers(cuda(id)) {
                Ok(builder) => Ok((builder, device)),
                Err(e) => Err(format!(
                    "the CUDA execution provider (device {id}) cannot register: {e}"
                )),
            },
            Device::Auto => match builder.with_execution_providers(cuda(0)) {
                Ok(builder) => Ok((builder, Device::Cuda(0))),
                Err(e) => {
                    tracing::info!("device auto: CUDA is not available ({e}); using the CPU");
                    Ok((e.recover(), Device::Cpu))
                }
            },
        }
    }

    /// A pool of the session's own, spinning as `spinning` says.
    fn own_pool(&self, builder: SessionBuilder, spinning: Spinning) -> ort::Result<SessionBuilder> {
        let builder = if shares_pool(self.spinning) {
            builder.with_independent_thread_pool()?
        } else {
            builder
        };
        let stop = spinning == Spinning::Adaptive;
        Ok(builder
            .with_intra_threads(self.intra_threads)?
            .with_inter_threads(1)?
            .with_intra_op_spinning(spinning != Spinning::Never)?
            .with_config_entry("session.force_spinning_stop", if stop { "1" } else { "0" })?)
    }
}

/// Whether CPU sessions share the process-wide pool under `spinning` (see `Runtime::init`).
fn shares_pool(spinning: Spinning) -> bool {
    spinning != Spinning::Adaptive
}

/// ONNX Runtime 1.32's Linux library starts its own telemetry (1DS, which looks up and
/// reports to mobile.events.data.microsoft.com about 9 s after start, then every minute or
/// so) when it loads, whatever the environment's telemetry setting says. Only the
/// `ORT_DISABLE_TELEMETRY` variable stops it, so it must be set before the library loads.
///
/// # Safety
/// Changes the process environment: call it before any other thread exists (first thing in
/// `main`), as `std::env::set_var` requires.
pub unsafe fn disable_telemetry() {
    // SAFETY: the caller guarantees the process is still single-threaded.
    unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
}

/// When the threads of an intra-op pool busy-wait for work instead of sleeping.
///
/// A run of a transformer is hundreds of operators, each split over the pool: a sleeping
/// thread must be woken for every one of them (a futex and, on a VM, an idle virtual CPU to
/// bring back), which made a single sentence 1.9 ms slower on the development machine.
/// Spinning after a run, though, burns a core that HTTP and tokenization need, and where
/// other processes compete for the cores, a spinning thread mostly waits for a partner that
/// is not running: there `Never` was 1.4 times as fast. The docs' Performance page
/// (`docs/src/performance.md`, "Spinning") has the measurements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Spinning {
    /// Spin while a run is in progress and stop at its end (ONNX Runtime's
    /// `session.force_spinning_stop`, on each session's own pool), except while other
    /// processes take the cores the runs need: then CPU sessions are rebuilt without
    /// spinning until the neighbour calms down (`contention`, `model::respin`). The
    /// batcher's thread waits up to 1 ms for the next request before it sleeps
    /// (`batcher::Engine::idle_spin`) while no other model runs.
    #[default]
    Adaptive,
    /// Spin between runs too, whatever other processes do (ONNX Runtime's own default), on
    /// one pool all sessions share.
    Always,
    /// Never spin: every operator wakes the threads it needs.
    Never,
}

impl FromStr for Spinning {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "adaptive" => Ok(Self::Adaptive),
            "always" | "true" => Ok(Self::Always),
            "never" | "false" => Ok(Self::Never),
            _ => Err(format!(
                "`{text}` is not a spinning mode: adaptive, always or never"
            )),
        }
    }
}

impl fmt::Display for Spinning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Adaptive => "adaptive",
            Self::Always => "always",
            Self::Never => "never",
        })
    }
}

impl<'de> serde::Deserialize<'de> for Spinning {
    /// A mode's name, or a boolean as earlier versions took it (true: always, false: never).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Given {
            Flag(bool),
            Name(String),
        }
        match Given::deserialize(d)? {
            Given::Flag(true) => Ok(Self::Always),
            Given::Flag(false) => Ok(Self::Never),
            Given::Name(name) => name.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Where a model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(i32),
    /// CUDA device 0 when its provider registers, else the CPU.
    Auto,
}

impl FromStr for Device {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            "auto" => Ok(Self::Auto),
            _ => text
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .filter(|n: &i32| *n >= 0)
                .map(Self::Cuda)
                .ok_or_else(|| format!("`{text}` is not a device: cpu, cuda, cuda:N or auto")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(id) => write!(f, "cuda:{id}"),
            Self::Auto => f.write_str("auto"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `scripts/fetch-onnxruntime --gpu` puts the CUDA and cuDNN libraries from NVIDIA's PyPI
/// wheels in `cuda/` beside the runtime. Loading them first lets the CUDA provider find
/// them without a system CUDA install or LD_LIBRARY_PATH. A library whose dependencies are
/// not loaded yet is retried after the others.
fn preload_cuda_libraries(library: &Path) {
    let Some(dir) = library.parent().map(|d| d.join("cuda")) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    let mut pending: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.contains(".so"))
        })
        .collect();
    pending.sort();
    let total = pending.len();
    loop {
        let before = pending.len();
        pending.retain(|path| ort::util::preload_dylib(path).is_err());
        if pending.is_empty() || pending.len() == before {
            break;
        }
    }
    tracing::info!(dir = %dir.display(), loaded = total - pending.len(), failed = ?pending, "preloaded CUDA libraries");
}

/// `ORT_DYLIB_PATH`, then `runtime.library`, then `.onnxruntime/` in the current directory,
/// then `.onnxruntime/` beside the executable or any folder above it (so
/// `target/release/embedserve` finds the repository's copy).
fn find_library(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let explicit = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| configured.map(Path::to_path_buf));
    if let Some(path) = explicit {
        // An explicit choice is never second-guessed: a wrong path is an error, not a
        // reason to quietly load some other copy.
        return if path.is_file() {
            Ok(path)
        } else {
            Err(RuntimeError::NotFound {
                looked: path.display().to_string(),
            })
        };
    }
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join(".onnxruntime"));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(|d| d.join(".onnxruntime")));
    }
    for dir in &dirs {
        if let Some(found) = library_in(dir) {
            return Ok(found);
        }
    }
    Err(RuntimeError::NotFound {
        looked: dirs
            .iter()
            .map(|d| d.join(LIBRARY_NAME).display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// `libonnxruntime.so`, or else a versioned `libonnxruntime.so.1.x.y`, in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join(LIBRARY_NAME);
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{LIBRARY_NAME}.")))
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!("auto".parse(), Ok(Device::Auto));
        assert!("gpu".parse::<Device>().is_err());
        assert!("cuda:-1".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn parses_spinning_modes_and_the_old_booleans() {
        assert_eq!("adaptive".parse(), Ok(Spinning::Adaptive));
        assert_eq!("always".parse(), Ok(Spinning::Always));
        assert_eq!("never".parse(), Ok(Spinning::Never));
        assert!("sometimes".parse::<Spinning>().is_err());
        #[derive(serde::Deserialize)]
        struct Runtime {
            spinning: Spinning,
        }
        let read = |toml: &str| toml::from_str::<Runtime>(toml).map(|r| r.spinning);
        assert_eq!(read("spinning = true").unwrap(), Spinning::Always);
        assert_eq!(read("spinning = false").unwrap(), Spinning::Never);
        assert_eq!(read("spinning = \"adaptive\"").unwrap(), Spinning::Adaptive);
        assert!(read("spinning = \"sometimes\"").is_err());
        assert_eq!(Spinning::default(), Spinning::Adaptive);
    }

    #[test]
    fn finds_versioned_library() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(library_in(dir.path()), None);
        std::fs::write(dir.path().join("libonnxruntime.so.1.32.0"), b"").unwrap();
        assert_eq!(
            library_in(dir.path()),
            Some(dir.path().join("libonnxruntime.so.1.32.0"))
        );
        std::fs::write(dir.path().join("libonnxruntime.so"), b"").unwrap();
        assert_eq!(
            library_in(dir.path()),
            Some(dir.path().join("libonnxruntime.so"))
        );
    }
}
