//! Finding and initialising ONNX Runtime: one environment per process, telemetry off, one
//! intra-op thread pool shared by every session so that loading more models never
//! multiplies the threads fighting over the cores.

use std::path::{Path, PathBuf};

use ort::environment::{Environment, GlobalThreadPoolOptions};
use ort::session::{Session, builder::GraphOptimizationLevel, builder::SessionBuilder};

use crate::config::RuntimeConfig;

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

/// The process's ONNX Runtime. Sessions built from it share its thread pool.
pub struct Runtime {
    environment: Environment,
}

impl Runtime {
    pub fn init(config: &RuntimeConfig) -> Result<Self, RuntimeError> {
        let library = find_library(config.library.as_deref())?;
        let builder = ort::init_from(&library).map_err(|e| RuntimeError::Load {
            path: library.clone(),
            reason: e.to_string(),
        })?;
        let threads = config
            .intra_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let pool = GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)?
            .with_inter_threads(1)?
            .with_spin_control(config.spinning)?;
        let environment = builder
            .with_name("embedserve")
            .with_telemetry(false)
            .with_global_thread_pool(pool)
            .build()?;
        tracing::info!(
            library = %library.display(),
            intra_threads = threads,
            spinning = config.spinning,
            "ONNX Runtime ready"
        );
        Ok(Self { environment })
    }

    /// A session builder with the server's defaults: full graph optimisation, the shared pool.
    pub fn session_builder(&self) -> ort::Result<SessionBuilder> {
        Ok(Session::builder(&self.environment)?
            .with_optimization_level(GraphOptimizationLevel::All)?)
    }
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
