//! Loaded models by name, bounded: a model loads on its first request (once, however many
//! requests ask at the same time, in a task of its own that finishes and caches the model
//! even when every requester has gone), stays while it is among the most recently used, and is
//! evicted when the cache holds too many models or too much memory, or the model sat idle.
//!
//! Requests hold an `Arc<Model>`, so eviction only drops the cache's reference: work in
//! flight finishes on the evicted model, and its memory is freed when the last request ends.
//!
//! What a load does is the `Loader`'s business; this module decides only which models are
//! loaded, so its tests drive it with a fake loader.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use crate::catalog::Catalog;
use crate::config::CacheConfig;
use crate::loader::{Loaded, Loader, ModelLoader};
use crate::metrics::METRICS;
use crate::model::{LoadError, ModelSource, ModelSpec};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("the model `{0}` does not exist")]
    NotFound(String),
    // The reason is part of the message (clients see it), so it is not also a `source`,
    // which would print it twice in error chains.
    #[error("the model `{name}` could not be loaded: {reason}")]
    Load {
        name: String,
        reason: Arc<LoadError>,
    },
}

/// The `model` label of failed loads of Hub ids that no configuration names.
pub const UNLISTED_HUB_ID: &str = "(unlisted hub id)";

/// How a model's load ended; `None` while it runs.
type Outcome<M> = Option<Result<Arc<M>, Arc<LoadError>>>;

/// Where requesters wait for a model's one load.
type Slot<M> = watch::Receiver<Outcome<M>>;

struct Entry<M> {
    slot: Slot<M>,
    pinned: bool,
    idle_timeout: Option<Duration>,
    /// Resident memory the load added, in bytes.
    memory: u64,
    /// The one record of recency: eviction for room takes the unpinned model used longest
    /// ago, and idle eviction compares it with the timeout.
    last_used: Instant,
}

impl<M> Entry<M> {
    fn model(&self) -> Option<Arc<M>> {
        self.slot.borrow().as_ref()?.as_ref().ok().cloned()
    }
}

struct Failure {
    at: Instant,
    error: Arc<LoadError>,
}

struct Inner<M> {
    /// Loaded and loading models.
    entries: HashMap<String, Entry<M>>,
    failures: HashMap<String, Failure>,
    /// The latest `last_used` handed out: stamps strictly increase, so two uses within one
    /// clock tick still have an order.
    latest_use: Instant,
}

impl<M> Inner<M> {
    fn stamp(&mut self) -> Instant {
        let now = Instant::now().max(self.latest_use + Duration::from_nanos(1));
        self.latest_use = now;
        now
    }
}

/// A model's state as `/v1/models` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelState {
    pub loaded: bool,
    pub pinned: bool,
    pub memory_bytes: u64,
}

pub struct ModelCache<L: Loader = ModelLoader> {
    catalog: Catalog,
    loader: L,
    limits: CacheConfig,
    inner: Mutex<Inner<L::Model>>,
}

impl<L: Loader> ModelCache<L> {
    pub fn new(catalog: Catalog, loader: L, limits: CacheConfig) -> Self {
        Self {
            catalog,
            loader,
            limits,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                failures: HashMap::new(),
                latest_use: Instant::now(),
            }),
        }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn lock(&self) -> MutexGuard<'_, Inner<L::Model>> {
        self.inner.lock()
    }

    /// The model `name` refers to, loading it if need be. A hit touches no file and takes
    /// the lock only to look up and mark the entry as just used.
    pub async fn get(self: &Arc<Self>, name: &str) -> Result<Arc<L::Model>, CacheError> {
        let key = self.catalog.canonical(name);
        if let Some(model) = self.hit(key) {
            METRICS.cache_hits.inc();
            return Ok(model);
        }
        METRICS.cache_misses.inc();
        let spec = self
            .catalog
            .lookup(name)
            .ok_or_else(|| CacheError::NotFound(name.to_string()))?;
        self.load(spec).await
    }

    fn hit(&self, key: &str) -> Option<Arc<L::Model>> {
        let mut inner = self.lock();
        let now = inner.stamp();
        let entry = inner.entries.get_mut(key)?;
        let model = entry.model()?;
        entry.last_used = now;
        tracing::debug!(model = key, "cache hit");
        Some(model)
    }

    /// Loads `spec` unless it is loaded or loading, then makes room by evicting. The load
    /// runs in its own task: a requester that goes away neither stops nor repeats it.
    pub async fn load(self: &Arc<Self>, spec: ModelSpec) -> Result<Arc<L::Model>, CacheError> {
        let name = spec.name.clone();
        let mut slot = {
            let mut inner = self.lock();
            let now = inner.stamp();
            match inner.entries.get_mut(&name) {
                Some(entry) => {
                    entry.last_used = now;
                    entry.slot.clone()
                }
                None => {
                    let (done, slot) = watch::channel(None);
                    inner.entries.insert(
                        name.clone(),
                        Entry {
                            slot: slot.clone(),
                            pinned: spec.config.pin,
                            idle_timeout: spec.config.idle_timeout,
                            memory: 0,
                            last_used: now,
                        },
                    );
                    let cache = self.clone();
                    tokio::spawn(async move { cache.finish_load(spec, done).await });
                    slot
                }
            }
        };
        let finished = slot
            .wait_for(Option::is_some)
            .await
            .map(|outcome| outcome.clone());
        let outcome = match finished {
            Ok(Some(outcome)) => outcome,
            Ok(None) | Err(_) => {
                // The load's task ended without an outcome (it panicked): forget the entry,
                // so the next request tries again.
                self.forget_loading(&name, &slot);
                Err(Arc::new(LoadError::Source(
                    "the load stopped unexpectedly".to_string(),
                )))
            }
        };
        outcome.map_err(|reason| CacheError::Load { name, reason })
    }

    /// Runs the load of `spec` and publishes its outcome; evicts for room after a success.
    async fn finish_load(self: Arc<Self>, spec: ModelSpec, done: watch::Sender<Outcome<L::Model>>) {
        let name = spec.name.clone();
        let outcome = self.load_model(spec).await;
        let loaded = outcome.is_ok();
        if !loaded {
            self.forget_loading(&name, &done.subscribe());
        }
        done.send_replace(Some(outcome));
        if loaded {
            self.enforce_limits(&name);
        }
    }

    /// Removes `name`'s entry if it is still the unfinished load `slot` waits on.
    fn forget_loading(&self, name: &str, slot: &Slot<L::Model>) {
        let mut inner = self.lock();
        if inner
            .entries
            .get(name)
            .is_some_and(|e| e.slot.same_channel(slot) && e.model().is_none())
        {
            inner.entries.remove(name);
        }
    }

    /// The one load of a model (single flight: callers wait on the same slot). A recent
    /// failure is answered from memory, so a broken model cannot make every request pay
    /// for a failed load.
    async fn load_model(&self, spec: ModelSpec) -> Result<Arc<L::Model>, Arc<LoadError>> {
        let name = spec.name.clone();
        if let Some(failure) = self.lock().failures.get(&name)
            && failure.at.elapsed() < self.limits.load_failure_backoff
        {
            return Err(failure.error.clone());
        }
        tracing::info!(model = %name, source = %spec.config.source, "loading {name} for the first time");
        // Any Hub id may be asked for (with allow_hub_downloads): one that fails to load must
        // not add a metric series of its own.
        let failure_label = if self.catalog.is_configured(&name)
            || !matches!(spec.config.source, ModelSource::Hub { .. })
        {
            name.as_str()
        } else {
            UNLISTED_HUB_ID
        }
        .to_string();
        let started = Instant::now();
        match self.loader.load(spec).await {
            Ok(Loaded { model, memory }) => {
                METRICS
                    .model_loads
                    .with_label_values(&[name.as_str(), "ok"])
                    .inc();
                METRICS
                    .model_load_seconds
                    .with_label_values(&[name.as_str()])
                    .observe(started.elapsed().as_secs_f64());
                METRICS.models_loaded.inc();
                let mut inner = self.lock();
                inner.failures.remove(&name);
                if let Some(entry) = inner.entries.get_mut(&name) {
                    entry.memory = memory;
                }
                Ok(Arc::new(model))
            }
            Err(error) => {
                METRICS
                    .model_loads
                    .with_label_values(&[failure_label.as_str(), "error"])
                    .inc();
                tracing::error!(model = %name, error = %error, "cannot load {name}");
                let error = Arc::new(error);
                let backoff = self.limits.load_failure_backoff;
                let mut inner = self.lock();
                // Expired failures go, so names that failed once (any Hub id, with
                // allow_hub_downloads) cannot grow the map without bound.
                inner.failures.retain(|_, f| f.at.elapsed() < backoff);
                inner.failures.insert(
                    name,
                    Failure {
                        at: Instant::now(),
                        error: error.clone(),
                    },
                );
                Err(error)
            }
        }
    }

    /// Evicts least recently used, unpinned, loaded models (never `keep`) until the cache is
    /// within its count and memory bounds.
    fn enforce_limits(&self, keep: &str) {
        let mut evicted = Vec::new();
        {
            let mut inner = self.lock();
            loop {
                let loaded = inner.entries.iter().filter(|(_, e)| e.model().is_some());
                let (count, memory) = loaded.fold((0, 0), |(n, m), (_, e)| (n + 1, m + e.memory));
                let (kind, reason) = if count > self.limits.max_loaded_models {
                    let max = self.limits.max_loaded_models;
                    (
                        "lru",
                        format!("{count} models loaded, max_loaded_models is {max}"),
                    )
                } else if let Some(budget) = self.limits.max_model_memory.filter(|b| memory > *b) {
                    let (used, budget) = (memory >> 20, budget >> 20);
                    (
                        "memory",
                        format!("models use {used} MiB, max_model_memory is {budget} MiB"),
                    )
                } else {
                    break;
                };
                let victim = inner
                    .entries
                    .iter()
                    .filter(|(k, e)| !e.pinned && e.model().is_some() && k.as_str() != keep)
                    .min_by_key(|(k, e)| (e.last_used, k.as_str()))
                    .map(|(k, _)| k.clone());
                let Some(victim) = victim else {
                    tracing::warn!("{reason}, but every other loaded model is pinned");
                    break;
                };
                if let Some(entry) = inner.entries.remove(&victim) {
                    evicted.push((
                        victim,
                        entry,
                        kind,
                        format!("least recently used; {reason}"),
                    ));
                }
            }
        }
        for (name, entry, kind, reason) in evicted {
            release(&name, entry, kind, &reason);
        }
    }

    /// Unloads every model idle for longer than its timeout. Returns how many it unloaded.
    pub fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let idle: Vec<(String, Entry<L::Model>, String)> = {
            let mut inner = self.lock();
            let expired: Vec<(String, Duration)> = inner
                .entries
                .iter()
                .filter(|(_, e)| !e.pinned && e.model().is_some())
                .filter_map(|(k, e)| {
                    let timeout = e.idle_timeout.or(self.limits.idle_timeout)?;
                    (now.duration_since(e.last_used) >= timeout).then(|| (k.clone(), timeout))
                })
                .collect();
            expired
                .into_iter()
                .filter_map(|(k, timeout)| {
                    let entry = inner.entries.remove(&k)?;
                    Some((
                        k,
                        entry,
                        format!("unused for {}", humantime::format_duration(timeout)),
                    ))
                })
                .collect()
        };
        let count = idle.len();
        for (name, entry, reason) in idle {
            release(&name, entry, "idle", &reason);
        }
        count
    }

    /// How often `evict_idle` should run, if any model can time out.
    pub fn idle_check_interval(&self) -> Option<Duration> {
        let per_model = self.catalog.configured_idle_timeouts();
        let shortest = self
            .limits
            .idle_timeout
            .into_iter()
            .chain(per_model)
            .min()?;
        Some((shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(30)))
    }

    /// Explicitly unloads `name` (pinned or not). `Ok(false)` when it was not loaded.
    pub fn unload(&self, name: &str) -> Result<bool, CacheError> {
        let key = self.catalog.canonical(name).to_string();
        let entry = {
            let mut inner = self.lock();
            // A model still loading stays: its waiters share that load.
            let loaded = inner.entries.get(&key).is_some_and(|e| e.model().is_some());
            if loaded {
                inner.entries.remove(&key)
            } else {
                None
            }
        };
        match entry {
            Some(entry) => {
                release(&key, entry, "admin", "unloaded on request");
                Ok(true)
            }
            None if self.catalog.lookup(name).is_some() => Ok(false),
            None => Err(CacheError::NotFound(name.to_string())),
        }
    }

    /// Loaded state of `name`, without loading it.
    pub fn state(&self, name: &str) -> ModelState {
        let key = self.catalog.canonical(name);
        let cached = self.lock().entries.get(key).map(|entry| ModelState {
            loaded: entry.model().is_some(),
            pinned: entry.pinned,
            memory_bytes: entry.memory,
        });
        // The catalog may look at the models directories: never under the cache's lock,
        // which every request takes.
        cached.unwrap_or_else(|| ModelState {
            pinned: self.catalog.lookup(name).is_some_and(|s| s.config.pin),
            ..ModelState::default()
        })
    }

    /// `name`'s model if it is loaded, without loading it or counting a use.
    pub fn loaded(&self, name: &str) -> Option<Arc<L::Model>> {
        let key = self.catalog.canonical(name);
        self.lock().entries.get(key).and_then(|entry| entry.model())
    }

    /// Names of loaded models, most recently used first.
    pub fn loaded_names(&self) -> Vec<String> {
        let inner = self.lock();
        let mut loaded: Vec<(&String, Instant)> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.model().is_some())
            .map(|(k, e)| (k, e.last_used))
            .collect();
        loaded.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        loaded.into_iter().map(|(k, _)| k.clone()).collect()
    }
}

/// Drops the cache's reference to an evicted model. Requests still using it keep it alive;
/// the session's memory is freed when the last of them finishes.
fn release<M: Send + Sync + 'static>(name: &str, entry: Entry<M>, kind: &str, reason: &str) {
    // Less the cache's own references: the slot's and the one `model()` just made.
    let in_flight = entry.model().map_or(0, |m| Arc::strong_count(&m) - 2);
    METRICS.evictions.with_label_values(&[name, kind]).inc();
    METRICS.models_loaded.dec();
    tracing::info!(
        model = name,
        in_flight,
        "evicted {name}: {reason}; requests still using it: {in_flight}"
    );
    // Releasing an ONNX Runtime session frees a lot of memory: not on an async worker.
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => drop(handle.spawn_blocking(move || drop(entry))),
        Err(_) => drop(entry),
    }
}

#[cfg(test)]
mod tests;
