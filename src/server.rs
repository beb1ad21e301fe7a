//! Starting the HTTP server: runtime, catalog, cache, preloads, then the listener.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow};
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::cache::ModelCache;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::runtime::Runtime;

/// Serves until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let cache = Arc::new(start_cache(&config).await?);
    // Bind before preloading: a taken port should fail at once, not after a long load.
    let (host, port) = (config.server.host.as_str(), config.server.port);
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let preloads: Vec<_> = cache.catalog().preloads().cloned().collect();
    for servable in preloads {
        let name = servable.spec.name.clone();
        cache
            .load(servable)
            .await
            .with_context(|| format!("cannot preload `{name}`"))?;
    }
    if let Some(every) = cache.idle_check_interval() {
        let cache = cache.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                cache.evict_idle();
            }
        });
    }
    // The cl100k_base vocabulary takes a moment to load: not on the first request's time.
    tokio::task::spawn_blocking(crate::model::warm_up_tiktoken);
    let state = Arc::new(AppState {
        cache,
        max_body_bytes: config.server.max_body_bytes,
        limits: api::RequestLimits {
            max_inputs_per_request: config.server.max_inputs_per_request,
            max_tokens_per_request: config.server.max_tokens_per_request,
        },
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let address = listener.local_addr()?;
    tracing::info!("embedserve listening on http://{address}");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("server stopped with an error")
}

/// ONNX Runtime (initialised off the async runtime: it loads a shared library) and an empty
/// model cache over the configured catalog.
pub async fn start_cache(config: &Config) -> anyhow::Result<ModelCache> {
    let runtime_config = config.runtime.clone();
    let runtime = tokio::task::spawn_blocking(move || Runtime::init(&runtime_config)).await??;
    let catalog =
        Catalog::from_config(config).map_err(|e| anyhow!("invalid configuration: {e}"))?;
    Ok(ModelCache::new(
        catalog,
        Arc::new(runtime),
        config.cache.clone(),
    ))
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
