//! The HTTP API: routes, OpenAI's request and response types, and the error envelope.

mod body;
mod embeddings;
mod error;
mod input;
mod json;
mod middleware;
mod models;
mod openapi;
mod ops;
mod rerank;
mod similarity;
mod tei;
mod tei_errors;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use body::{BodyBudget, BodyLimits};
pub use error::ApiError;
pub use json::ApiJson;
pub use ops::Readiness;

use crate::cache::ModelCache;

pub struct AppState {
    pub cache: Arc<ModelCache>,
    pub body: BodyLimits,
    pub limits: RequestLimits,
    pub ready: Arc<Readiness>,
    pub api_keys: Vec<String>,
    pub protect_metrics: bool,
    pub cors_origins: Vec<String>,
    pub compress_responses: bool,
    pub request_timeout: std::time::Duration,
    /// The model of requests that name none: `server.default_model`, else the only
    /// configured model.
    pub default_model: Option<String>,
    /// Unix time the server started: the `created` of every model object.
    pub started_at: u64,
}

/// Per-request bounds, like OpenAI's.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_inputs_per_request: usize,
    pub max_tokens_per_request: usize,
}

/// The routes and their layers. A layer that would do nothing in this configuration (no API
/// keys, no CORS origins, compression off) is left out: each costs every request a few µs
/// with caches cold after an inference run.
pub fn router(state: Arc<AppState>) -> Router {
    let authenticated =
        || axum::middleware::from_fn_with_state(state.clone(), middleware::require_api_key);
    let authenticate = !state.api_keys.is_empty();
    let mut api = Router::new()
        .route("/v1/embeddings", post(embeddings::create))
        .route("/embeddings", post(embeddings::create))
        .route("/v1/rerank", post(rerank::rerank))
        .route("/v2/rerank", post(rerank::rerank))
        .route("/rerank", post(rerank::rerank))
        .route("/embed", post(tei::embed))
        .route("/", post(tei::root))
        .route("/similarity", post(similarity::similarity))
        .route("/tokenize", post(tei::tokenize))
        .route("/info", get(tei::info))
        .route("/v1/models", get(models::list))
        .route("/models", get(models::list))
        // Hub ids contain a slash: `{*id}` takes the rest of the path.
        .route("/v1/models/{*id}", get(models::retrieve))
        .route("/models/{*id}", get(models::retrieve))
        .route(
            "/admin/models/{*id}",
            post(models::admin_post).delete(models::admin_delete),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::timeout,
        ));
    let mut metrics = Router::new().route("/metrics", get(ops::metrics));
    if authenticate {
        api = api.route_layer(authenticated());
        if state.protect_metrics {
            metrics = metrics.route_layer(authenticated());
        }
    }
    let open = Router::new()
        .route("/openapi.json", get(openapi::document))
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready));

    let mut app = Router::new()
        .merge(api)
        .merge(metrics)
        .merge(open)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::refuse_oversized_bodies,
        ))
        .route_layer(axum::middleware::from_fn(tei_errors::tei_errors))
        .route_layer(axum::middleware::from_fn(middleware::track))
        .fallback(error::unknown_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.body.max_bytes));
    if state.compress_responses {
        app = app.layer(compression());
    }
    if !state.cors_origins.is_empty() {
        app = app.layer(cors(&state.cors_origins));
    }
    app.layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                // A 5xx is logged once, where it arises (the failed load or run, with its
                // reason); `/ready` answering 503 while models load is no error at all.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG))
                .make_span_with(|request: &axum::http::Request<_>| {
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        id,
                        method = %request.method(),
                        path = request.uri().path(),
                        model = tracing::field::Empty,
                        inputs = tracing::field::Empty,
                        tokens = tracing::field::Empty,
                        queue_ms = tracing::field::Empty,
                        inference_ms = tracing::field::Empty,
                    )
                }),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error while handling the request",
            )
            .into_response()
        }))
        .with_state(state)
}

/// A handler's result as a response, labelled with the model it was for (once the model is
/// known to exist) for the request metrics.
fn labelled(result: Result<Response, ApiError>, model: Option<String>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(model) = model {
        response
            .extensions_mut()
            .insert(middleware::ModelLabel(model));
    }
    response
}

/// The model `name`, loaded when needed, with the request span's `model` and the response's
/// metric label set once it is known to exist.
async fn serve_model(
    state: &AppState,
    name: &str,
    label: &mut Option<String>,
) -> Result<Arc<crate::model::Model>, ApiError> {
    let model = state.cache.get(name).await?;
    tracing::Span::current().record("model", model.name());
    *label = Some(model.name().to_string());
    Ok(model)
}

/// The model a request names, else the default model, else a 400 that says how to choose.
fn requested_model(state: &AppState, model: Option<&str>) -> Result<String, ApiError> {
    match (model, &state.default_model) {
        (Some(model), _) => Ok(model.to_string()),
        (None, Some(default)) => Ok(default.clone()),
        (None, None) => Err(ApiError::bad_request(
            "model",
            "the request names no model and this server has no default: add a `model` field \
             (GET /v1/models lists them), or start the server with --default-model \
             (server.default_model)",
        )),
    }
}

/// Compression at the fastest level, when `server.compress_responses` asks for it. Off by
/// default: gzip's default level took 11.6 ms for a 32-vector answer (150 KB, 2.5× smaller)
/// on the development machine, far more than sending it over a LAN; base64 vectors shrink by
/// a quarter at best.
fn compression() -> CompressionLayer {
    CompressionLayer::new().quality(CompressionLevel::Fastest)
}

/// CORS for the configured origins: `*`, or a list.
fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers([axum::http::HeaderName::from_static("x-request-id")])
}
