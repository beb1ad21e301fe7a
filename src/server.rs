//! Starting and stopping the HTTP server: runtime and cache, the listener, preloads behind
//! the readiness check, the idle-model reaper, and shutdown: drain, finish, or stop at a
//! second signal.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::api::{self, AppState, Readiness};
use crate::batch::Batches;
use crate::cache::ModelCache;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::connections::{self, BoundedListener, ConnectionActivity, ConnectionLimits, Draining};
use crate::loader::ModelLoader;
use crate::runtime::Runtime;

/// Serves until SIGINT or SIGTERM, then drains: `/ready` answers 503 for
/// `server.drain_delay` while requests are still served, then the listener closes and
/// requests in flight get `server.shutdown_timeout` to finish. A second signal stops at
/// once. A preloaded model that cannot load stops the server.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let cache = Arc::new(start_cache(&config).await?);
    let (host, port) = (config.server.host.as_str(), config.server.port);
    let tcp = listen(host, port)
        .await
        .with_context(|| format!("cannot listen on {host}:{port}"))?;
    let preloads: Vec<_> = cache.catalog().preloads().cloned().collect();
    let ready = Arc::new(Readiness::not_ready(format!(
        "loading {} preloaded models",
        preloads.len()
    )));
    let batches = open_batches(&config).await?;
    let state = Arc::new(AppState {
        batches: batches.clone(),
        ..app_state(&config, cache.clone(), ready.clone())
    });
    // The cl100k_base vocabulary takes a moment to load: not on the first request's time.
    tokio::task::spawn_blocking(crate::model::warm_up_tiktoken);
    spawn_idle_reaper(&cache);
    crate::memory::spawn_trimmer();

    let address = tcp.local_addr()?;
    tracing::info!("embedserve listening on http://{address}");
    if let Some(path) = &config.server.port_file {
        write_port_file(path, address.port())?;
    }
    let preloading = async {
        for spec in preloads {
            let name = spec.name.clone();
            ready.set_not_ready(format!("loading preloaded model `{name}`"));
            cache
                .load(spec)
                .await
                .with_context(|| format!("cannot preload `{name}`"))?;
        }
        ready.set_ready();
        tracing::info!("embedserve ready");
        anyhow::Ok(())
    };

    let server_config = &config.server;
    let draining = Arc::new(Draining::default());
    let listener = BoundedListener::new(
        tcp,
        ConnectionLimits {
            max_connections: server_config.max_connections,
            max_connections_per_ip: server_config.max_connections_per_ip,
            header_read_timeout: server_config.header_read_timeout,
            keep_alive_timeout: server_config.keep_alive_timeout,
        },
        draining.clone(),
    );
    let routes = api::router(state);
    if let Some(batches) = batches {
        let runner = Arc::new(api::RouterRunner(routes.clone()));
        tokio::spawn(crate::batch::engine::run(batches, runner));
    }
    let app = routes
        .layer(axum::middleware::from_fn(connections::mark_busy))
        .into_make_service_with_connect_info::<ConnectionActivity>();
    let close_listener = Arc::new(Notify::new());
    let server = axum::serve(listener, app).with_graceful_shutdown({
        let close_listener = close_listener.clone();
        async move { close_listener.notified().await }
    });
    let mut server = std::pin::pin!(server.into_future());
    let mut preloading = std::pin::pin!(preloading);
    let mut signals = Signals::new();

    tokio::select! {
        served = &mut server => return served.context("server stopped with an error"),
        Err(error) = &mut preloading => return Err(error),
        () = signals.next() => {}
    }
    ready.set_not_ready("shutting down");
    tracing::info!(
        "shutting down: /ready answers 503 for {} while requests are still served (a second \
         signal stops at once)",
        humantime::format_duration(server_config.drain_delay)
    );
    tokio::select! {
        served = &mut server => return served.context("server stopped with an error"),
        () = tokio::time::sleep(server_config.drain_delay) => {}
        () = signals.next() => return stopped_by_second_signal(),
    }
    tracing::info!("no new connections; finishing the requests in flight");
    close_listener.notify_one();
    draining.start();
    tokio::select! {
        served = &mut server => served.context("server stopped with an error")?,
        () = tokio::time::sleep(server_config.shutdown_timeout) => tracing::warn!(
            "requests still running after {}: stopping anyway",
            humantime::format_duration(server_config.shutdown_timeout)
        ),
        () = signals.next() => return stopped_by_second_signal(),
    }
    tracing::info!("embedserve stopped");
    Ok(())
}

fn stopped_by_second_signal() -> anyhow::Result<()> {
    tracing::warn!("second signal: stopping now, dropping the requests in flight");
    Ok(())
}

/// The HTTP API's state for `config`, over `cache`.
pub fn app_state(config: &Config, cache: Arc<ModelCache>, ready: Arc<Readiness>) -> AppState {
    let server = &config.server;
    AppState {
        cache,
        body: api::BodyLimits {
            max_bytes: server.max_body_bytes,
            timeout: server.body_timeout,
            budget: api::BodyBudget::new(server.body_buffer_budget),
        },
        limits: api::RequestLimits {
            max_inputs_per_request: server.max_inputs_per_request,
            max_tokens_per_request: server.max_tokens_per_request,
        },
        ready,
        api_keys: server.api_keys.clone(),
        protect_metrics: server.protect_metrics,
        cors_origins: server.cors_origins.clone(),
        compress_responses: server.compress_responses,
        request_timeout: server.request_timeout,
        default_model: server
            .default_model
            .clone()
            .or_else(|| match config.models.as_slice() {
                [only] => Some(only.effective_name()),
                _ => None,
            }),
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        batches: None,
        replica_name: server.replica_name.clone(),
    }
}

/// The Files and Batch API's store in `server.data_dir`, when it is set.
pub async fn open_batches(config: &Config) -> anyhow::Result<Option<Arc<Batches>>> {
    let Some(dir) = config.server.data_dir.clone() else {
        return Ok(None);
    };
    let (settings, max_line) = (config.batches.clone(), config.server.max_body_bytes);
    let replica = config.server.replica_name.clone();
    let batches =
        tokio::task::spawn_blocking(move || Batches::open(&dir, settings, max_line, replica))
            .await??;
    Ok(Some(batches))
}

/// ONNX Runtime (initialised off the async runtime: it loads a shared library) and an empty
/// model cache over the configured catalog.
pub async fn start_cache(config: &Config) -> anyhow::Result<ModelCache> {
    let runtime_config = config.runtime.clone();
    let runtime = tokio::task::spawn_blocking(move || Runtime::init(&runtime_config)).await??;
    let catalog = Catalog::from_config(config);
    let loader = ModelLoader::new(catalog.hub().clone(), Arc::new(runtime));
    Ok(ModelCache::new(catalog, loader, config.cache.clone()))
}

/// Connections the kernel may hold for `accept` (capped by `net.core.somaxconn`). The
/// standard library's 128 overflowed under a connection flood: the kernel then dropped
/// SYNs, and a fresh client waited a full second for its retransmission.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on the first address `host` resolves to that can be bound.
async fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last_error = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        let socket = if address.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(address)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "no address to listen on",
        )
    }))
}

/// Writes `port` whole or not at all (a reader polling for the file never sees it half
/// written): to a temporary file beside it, then renamed.
fn write_port_file(path: &std::path::Path, port: u16) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("{port}\n"))
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("cannot write the port file {}", path.display()))
}

fn spawn_idle_reaper(cache: &Arc<ModelCache>) {
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
}

/// SIGINT and SIGTERM, as many as come.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        let terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => Some(signal),
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    None
                }
            };
        Self {
            #[cfg(unix)]
            terminate,
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        let terminate = async {
            match &mut self.terminate {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            () = terminate => {},
        }
    }
}
