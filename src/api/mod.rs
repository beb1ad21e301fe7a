//! The HTTP API: routes, OpenAI's request and response types, and the error envelope.

mod batch_lines;
mod batches;
mod body;
mod cohere;
mod decode;
mod embed_all;
mod embed_sparse;
mod embeddings;
mod error;
mod error_shapes;
mod files;
mod input;
mod jobs;
mod json;
mod middleware;
mod models;
mod openapi;
mod ops;
mod predict;
mod rerank;
mod resolve;
mod routing;
mod similarity;
mod state;
mod tei;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::{CompressionLayer, CompressionLevel};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

pub use batch_lines::{BatchLine, RouterRunner};
pub use body::{BodyBudget, BodyLimits};
pub use error::ApiError;
pub use json::ApiJson;
pub use state::{AppState, Readiness, RequestLimits};

use routing::ApiRouter;

/// The response header naming the replica that answered (`server.replica_name`).
const REPLICA_HEADER: &str = "x-embedserve-replica";

/// The routes and their layers. A layer that would do nothing in this configuration (no API
/// keys, no CORS origins, compression off) is left out: each costs every request a few µs
/// with caches cold after an inference run.
pub fn router(state: Arc<AppState>) -> Router {
    let authenticated =
        || axum::middleware::from_fn_with_state(state.clone(), middleware::require_api_key);
    let authenticate = !state.api_keys.is_empty();
    // TEI's and Cohere's routes answer errors in their API's shape, whichever layer makes
    // them (authentication, the body limit, the handler): a layer below rewrites them.
    let tei = tei::routes()
        .merge(similarity::routes())
        .merge(predict::routes())
        .merge(decode::routes())
        .merge(embed_sparse::routes())
        .merge(embed_all::routes());
    let cohere = cohere::routes();
    let shaped_paths = error_shapes::ShapedPaths::of(&tei, &cohere, &[rerank::COHERE_PATH]);
    let mut api = ApiRouter::new()
        .merge(embeddings::routes())
        .merge(rerank::routes())
        .merge(tei)
        .merge(cohere)
        .merge(models::routes())
        .merge(files::routes())
        .merge(batches::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::timeout,
        ))
        .merge(files::upload_routes());
    let mut metrics = ops::metrics_routes();
    if authenticate {
        api = api.route_layer(authenticated());
        if state.protect_metrics {
            metrics = metrics.route_layer(authenticated());
        }
    }
    let (routes, document) = openapi::router()
        .merge(api)
        .merge(metrics)
        .merge(ops::routes())
        .split_for_parts();
    openapi::publish(document);

    let mut app = routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::refuse_oversized_bodies,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            shaped_paths,
            error_shapes::reshape_errors,
        ))
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
    if let Some(name) = &state.replica_name {
        // The router learns which replica is which from this (on `/health`), to send each
        // call about a file or batch to the replica whose name its id carries.
        let value = HeaderValue::from_str(name).expect("a replica name is a DNS label");
        app = app.layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(REPLICA_HEADER),
            value,
        ));
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
