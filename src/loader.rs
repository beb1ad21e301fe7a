//! How the cache gets a model: the `Loader` seam, and the real loader behind it (resolve and
//! fetch the files, load off the async runtime, measure the memory the load added).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::model::{HubSettings, LoadError, Model, ModelSpec};
use crate::runtime::Runtime;

/// A loaded model and the resident memory its load added, in bytes.
pub struct Loaded<M> {
    pub model: M,
    pub memory: u64,
}

/// What the cache loads models with. It calls `load` once per model however many requests
/// wait (single flight), so a loader need not guard against concurrent loads of one name.
pub trait Loader: Send + Sync + 'static {
    type Model: Send + Sync + 'static;

    fn load(
        &self,
        spec: ModelSpec,
    ) -> impl Future<Output = Result<Loaded<Self::Model>, LoadError>> + Send;
}

/// Loads ONNX models from folders, mirrors or the Hub.
pub struct ModelLoader {
    hub: HubSettings,
    runtime: Arc<Runtime>,
    /// Loads run one at a time so that each one's memory can be measured on its own.
    one_at_a_time: Arc<Mutex<()>>,
}

impl ModelLoader {
    pub fn new(hub: HubSettings, runtime: Arc<Runtime>) -> Self {
        Self {
            hub,
            runtime,
            one_at_a_time: Arc::default(),
        }
    }
}

impl Loader for ModelLoader {
    type Model = Model;

    async fn load(&self, spec: ModelSpec) -> Result<Loaded<Model>, LoadError> {
        let started = Instant::now();
        let dir = self
            .hub
            .resolve(&spec.config.source, spec.config.onnx_file.as_deref())
            .await?;
        let runtime = self.runtime.clone();
        let one_at_a_time = self.one_at_a_time.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            let _alone = one_at_a_time.lock();
            let before = resident_bytes();
            let model = Model::load_dir(&spec, &dir, &runtime)?;
            let memory = resident_bytes().saturating_sub(before);
            Ok::<_, LoadError>(Loaded { model, memory })
        })
        .await
        .map_err(|e| LoadError::Source(format!("model loader stopped: {e}")))??;
        let model = &loaded.model;
        tracing::info!(
            model = model.name(),
            dir = %model.dir().display(),
            onnx = model.onnx_file(),
            dimension = model.dimension(),
            max_seq_length = model.max_seq_length(),
            memory_mib = loaded.memory / (1 << 20),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded {}",
            model.name()
        );
        Ok(loaded)
    }
}

/// The process's resident memory in bytes (0 where /proc is unavailable).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
