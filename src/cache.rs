//! Loaded models by name. A model loads on its first request, once however many requests ask
//! for it at the same time, and a failed load is not remembered, so a later request retries.
//!
//! Every loaded model stays loaded for now; bounding the cache (LRU eviction, pins, memory
//! budget) plugs in here without changing callers, who only ever hold an `Arc<Model>`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::OnceCell;

use crate::catalog::Catalog;
use crate::model::{LoadError, Model, ModelSpec};
use crate::runtime::Runtime;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the model `{0}` does not exist")]
    NotFound(String),
    #[error("the model `{name}` could not be loaded: {source}")]
    Load {
        name: String,
        #[source]
        source: LoadError,
    },
}

type Slot = Arc<OnceCell<Arc<Model>>>;

pub struct ModelCache {
    catalog: Catalog,
    runtime: Arc<Runtime>,
    slots: Mutex<HashMap<String, Slot>>,
}

impl ModelCache {
    pub fn new(catalog: Catalog, runtime: Arc<Runtime>) -> Self {
        Self {
            catalog,
            runtime,
            slots: Mutex::new(HashMap::new()),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The loaded model that `name` refers to, loading it if need be.
    pub async fn get(&self, name: &str) -> Result<Arc<Model>, CacheError> {
        let spec = self
            .catalog
            .lookup(name)
            .ok_or_else(|| CacheError::NotFound(name.to_string()))?;
        self.load(spec).await
    }

    /// The model if it is loaded already; never loads.
    pub fn loaded(&self, name: &str) -> Option<Arc<Model>> {
        let spec = self.catalog.lookup(name)?;
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.get(&spec.name)?.get().cloned()
    }

    pub async fn load(&self, spec: ModelSpec) -> Result<Arc<Model>, CacheError> {
        // The lock only guards the map; the load itself runs outside it, so loading one model
        // never blocks requests to another.
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(spec.name.clone()).or_default().clone()
        };
        if let Some(model) = slot.get() {
            tracing::debug!(model = %spec.name, "cache hit");
            return Ok(model.clone());
        }
        let name = spec.name.clone();
        slot.get_or_try_init(|| async {
            tracing::info!(model = %name, source = %spec.source, "loading {name} for the first time");
            let started = Instant::now();
            let model = Model::load(spec, self.catalog.hub(), self.runtime.clone()).await?;
            tracing::info!(
                model = %name,
                dir = %model.dir().display(),
                onnx = model.onnx_file(),
                dimension = model.dimension(),
                max_seq_length = model.max_seq_length(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "loaded {name}"
            );
            Ok(Arc::new(model))
        })
        .await
        .cloned()
        .map_err(|source: LoadError| {
            tracing::error!(model = %name, error = %source, "cannot load {name}");
            CacheError::Load { name, source }
        })
    }
}
