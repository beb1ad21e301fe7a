//! Unit tests of the cache, driven through its seam with a fake, without ONNX Runtime.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use tokio::sync::Semaphore;

use super::*;
use crate::config::{Config, ModelConfig};
use crate::model::{ModelSource, ModelSpec};

struct FakeModel {
    drops: Arc<AtomicUsize>,
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

/// Loads instantly (or once released, when gated), fails for `broken`, and reports
/// `memory` per model.
#[derive(Default)]
struct FakeLoader {
    loads: Mutex<Vec<String>>,
    gate: Option<Semaphore>,
    memory: u64,
    drops: Arc<AtomicUsize>,
}

impl Loader for FakeLoader {
    type Model = FakeModel;

    async fn load(&self, spec: ModelSpec) -> Result<Loaded<FakeModel>, LoadError> {
        self.loads.lock().push(spec.name.clone());
        if let Some(gate) = &self.gate {
            drop(gate.acquire().await);
        }
        if spec.name == "broken" {
            return Err(LoadError::Config("the fake cannot load `broken`".into()));
        }
        Ok(Loaded {
            model: FakeModel {
                drops: self.drops.clone(),
            },
            memory: self.memory,
        })
    }
}

fn model(name: &str) -> ModelConfig {
    ModelConfig {
        source: ModelSource::Dir(format!("/fake/{name}").into()),
        ..ModelConfig::default()
    }
}

fn cache(
    models: Vec<ModelConfig>,
    limits: CacheConfig,
    loader: FakeLoader,
) -> Arc<ModelCache<FakeLoader>> {
    let config = Config {
        models,
        ..Config::default()
    };
    Arc::new(ModelCache::new(
        Catalog::from_config(&config),
        loader,
        limits,
    ))
}

fn plain(names: &[&str]) -> Vec<ModelConfig> {
    names.iter().map(|n| model(n)).collect()
}

fn limits(max_loaded_models: usize) -> CacheConfig {
    CacheConfig {
        max_loaded_models,
        ..CacheConfig::default()
    }
}

async fn get_all(cache: &Arc<ModelCache<FakeLoader>>, names: &[&str]) {
    for name in names {
        cache.get(name).await.unwrap();
    }
}

/// Polls `future` once: it must be waiting.
async fn assert_pending<F: Future>(mut future: std::pin::Pin<&mut F>) {
    let pending = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx).is_pending()));
    assert!(pending.await, "the future should wait");
}

#[tokio::test]
async fn concurrent_requests_share_one_load() {
    let loader = FakeLoader {
        gate: Some(Semaphore::new(0)),
        ..FakeLoader::default()
    };
    let cache = cache(plain(&["a"]), limits(4), loader);
    let mut first = pin!(cache.get("a"));
    let mut second = pin!(cache.get("a"));
    let mut third = pin!(cache.get("a"));
    assert_pending(first.as_mut()).await;
    assert_pending(second.as_mut()).await;
    assert_pending(third.as_mut()).await;
    cache.loader.gate.as_ref().unwrap().add_permits(1);
    let models = [
        first.await.unwrap(),
        second.await.unwrap(),
        third.await.unwrap(),
    ];
    assert_eq!(*cache.loader.loads.lock(), ["a"]);
    assert!(models.iter().all(|m| Arc::ptr_eq(m, &models[0])));
    assert!(cache.get("a").await.is_ok());
    assert_eq!(cache.loader.loads.lock().len(), 1, "a hit never loads");
}

/// Requesters that go away do not stop the load, and the next request finds the model
/// loaded: 20 requests that disconnected mid-load once caused 20 loads.
#[tokio::test]
async fn a_load_finishes_and_is_cached_when_its_requesters_are_gone() {
    let loader = FakeLoader {
        gate: Some(Semaphore::new(0)),
        ..FakeLoader::default()
    };
    let cache = cache(plain(&["a"]), limits(4), loader);
    for _ in 0..20 {
        let mut abandoned = pin!(cache.get("a"));
        assert_pending(abandoned.as_mut()).await;
    }
    // The load's own task runs once this test yields.
    while cache.loader.loads.lock().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        *cache.loader.loads.lock(),
        ["a"],
        "one load, however many gave up"
    );
    cache.loader.gate.as_ref().unwrap().add_permits(1);
    let model = cache.get("a").await.unwrap();
    assert_eq!(*cache.loader.loads.lock(), ["a"]);
    assert_eq!(cache.loaded_names(), ["a"]);
    assert!(Arc::ptr_eq(&model, &cache.get("a").await.unwrap()));
}

#[tokio::test]
async fn a_failed_load_is_answered_from_memory_until_the_backoff_ends() {
    let cache = cache(
        plain(&["broken"]),
        CacheConfig {
            load_failure_backoff: Duration::from_secs(3600),
            ..limits(4)
        },
        FakeLoader::default(),
    );
    for _ in 0..3 {
        let error = cache.get("broken").await.err().unwrap();
        assert!(
            error.to_string().contains("cannot load `broken`"),
            "{error}"
        );
    }
    assert_eq!(cache.loader.loads.lock().len(), 1);
    assert!(cache.loaded_names().is_empty());

    let retrying = self::cache(
        plain(&["broken"]),
        CacheConfig {
            load_failure_backoff: Duration::ZERO,
            ..limits(4)
        },
        FakeLoader::default(),
    );
    for _ in 0..3 {
        assert!(retrying.get("broken").await.is_err());
    }
    assert_eq!(retrying.loader.loads.lock().len(), 3);
}

#[tokio::test]
async fn evicts_the_least_recently_used_model() {
    let cache = cache(plain(&["a", "b", "c"]), limits(2), FakeLoader::default());
    get_all(&cache, &["a", "b", "a", "c"]).await;
    assert_eq!(cache.loaded_names(), ["c", "a"]);
    get_all(&cache, &["b"]).await;
    assert_eq!(cache.loaded_names(), ["b", "c"]);
    assert_eq!(*cache.loader.loads.lock(), ["a", "b", "c", "b"]);
}

#[tokio::test]
async fn pinned_models_stay_and_the_new_model_is_never_the_victim() {
    let mut models = plain(&["a", "b", "c"]);
    models[0].pin = true;
    let cache = cache(models, limits(1), FakeLoader::default());
    get_all(&cache, &["a", "b"]).await;
    assert_eq!(
        cache.loaded_names(),
        ["b", "a"],
        "over the limit, but a is pinned"
    );
    get_all(&cache, &["c"]).await;
    assert_eq!(cache.loaded_names(), ["c", "a"]);
    assert!(cache.state("a").pinned && cache.state("a").loaded);
}

#[tokio::test]
async fn evicts_for_memory() {
    let loader = FakeLoader {
        memory: 30 << 20,
        ..FakeLoader::default()
    };
    let limits = CacheConfig {
        max_model_memory: Some(50 << 20),
        ..limits(4)
    };
    let cache = cache(plain(&["a", "b"]), limits, loader);
    get_all(&cache, &["a", "b"]).await;
    assert_eq!(cache.loaded_names(), ["b"]);
    assert_eq!(cache.state("b").memory_bytes, 30 << 20);
}

#[tokio::test]
async fn unloads_models_idle_past_their_timeout() {
    let mut models = plain(&["quick", "slow", "pinned"]);
    models[0].idle_timeout = Some(Duration::ZERO);
    models[1].idle_timeout = Some(Duration::from_secs(3600));
    models[2].idle_timeout = Some(Duration::ZERO);
    models[2].pin = true;
    let cache = cache(models, limits(4), FakeLoader::default());
    get_all(&cache, &["quick", "slow", "pinned"]).await;
    assert_eq!(cache.evict_idle(), 1);
    assert_eq!(cache.loaded_names(), ["pinned", "slow"]);
    assert_eq!(
        cache.idle_check_interval(),
        Some(Duration::from_millis(10)),
        "a quarter of the shortest timeout, at least 10 ms"
    );
}

#[test]
fn an_evicted_model_lives_on_while_a_request_holds_it() {
    let cache = cache(plain(&["a", "b"]), limits(1), FakeLoader::default());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let held = runtime.block_on(async {
        let held = cache.get("a").await.unwrap();
        get_all(&cache, &["b"]).await;
        held
    });
    // Dropping the runtime waits for the blocking task that released the cache's copy.
    drop(runtime);
    assert_eq!(cache.loaded_names(), ["b"]);
    assert_eq!(cache.loader.drops.load(Ordering::SeqCst), 0);
    assert_eq!(Arc::strong_count(&held), 1, "only the request holds it now");
    drop(held);
    assert_eq!(cache.loader.drops.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unload_leaves_a_loading_model_to_its_waiters() {
    let loader = FakeLoader {
        gate: Some(Semaphore::new(0)),
        ..FakeLoader::default()
    };
    let cache = cache(plain(&["a"]), limits(4), loader);
    let mut loading = pin!(cache.get("a"));
    assert_pending(loading.as_mut()).await;
    assert!(!cache.unload("a").unwrap());
    cache.loader.gate.as_ref().unwrap().add_permits(1);
    loading.await.unwrap();
    assert!(cache.unload("a").unwrap());
    assert!(cache.loaded_names().is_empty());
    assert!(matches!(cache.unload("nope"), Err(CacheError::NotFound(_))));
}
