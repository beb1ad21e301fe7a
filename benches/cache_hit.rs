//! What a cache hit costs: the time from a request naming a loaded model to holding that
//! model, ready to queue its inputs. `cargo bench --bench cache_hit`; under `cargo test` it
//! runs a few iterations as a smoke test.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use embedserve::config::{Config, ModelFlags, Overrides};
use embedserve::server::start_cache;

fn main() {
    // SAFETY: no other thread exists yet.
    unsafe { embedserve::runtime::disable_telemetry() };
    let full = std::env::args().any(|a| a == "--bench");
    let iterations: u32 = if full { 1_000_000 } else { 1_000 };
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    let overrides = Overrides {
        models: ModelFlags {
            models_dirs: vec![models.clone()],
            models: vec![format!(
                "configured={}",
                models.join("tiny/bert-mean").display()
            )],
            ..ModelFlags::default()
        },
        ..Overrides::default()
    };
    let config = Config::load(None, overrides).expect("config");
    let runtime = tokio::runtime::Runtime::new().expect("tokio");
    runtime.block_on(async {
        let cache = std::sync::Arc::new(
            start_cache(&config)
                .await
                .expect("ONNX Runtime (run scripts/fetch-onnxruntime)"),
        );
        for (kind, name) in [
            ("configured name", "configured"),
            ("models-dir name", "tiny/bert-cls"),
        ] {
            cache.get(name).await.expect("first load");
            let started = Instant::now();
            for _ in 0..iterations {
                black_box(cache.get(black_box(name)).await.expect("hit"));
            }
            let per_hit = started.elapsed() / iterations;
            println!(
                "cache hit, {kind}: {} ns per request ({iterations} hits)",
                per_hit.as_nanos()
            );
        }
    });
}
