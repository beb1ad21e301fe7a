//! What operators and orchestrators poll: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::metrics::METRICS;

/// Liveness and readiness: never behind API keys.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .merge(serve(utoipa_axum::routes!(health), &[]))
        .merge(serve(utoipa_axum::routes!(ready), &[]))
}

/// The metrics, behind API keys when `server.protect_metrics` says so.
pub fn metrics_routes() -> ApiRouter {
    serve(utoipa_axum::routes!(metrics), &[])
}

/// `GET /health`: the process is up and answering.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "The process answers")), tag = "operations")]
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 once ONNX Runtime and every preloaded model are ready, else 503 with
/// the reason.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Ready to serve"),
    (status = 503, description = "Not ready, with the reason"),
), tag = "operations")]
pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    match state.ready.reason() {
        None => Json(json!({"status": "ready"})).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

/// `GET /metrics` in Prometheus' text format.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")), tag = "operations")]
pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        METRICS.render(),
    )
        .into_response()
}
