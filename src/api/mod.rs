//! The HTTP API: routes, OpenAI's request and response types, and the error envelope.

mod embeddings;
mod error;
mod input;
mod models;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::cache::ModelCache;

pub struct AppState {
    pub cache: Arc<ModelCache>,
    pub max_body_bytes: usize,
    pub limits: RequestLimits,
    /// Unix time the server started: the `created` of every model object.
    pub started_at: u64,
}

/// Per-request bounds, like OpenAI's.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_inputs_per_request: usize,
    pub max_tokens_per_request: usize,
}

pub fn router(state: Arc<AppState>) -> Router {
    let max_body_bytes = state.max_body_bytes;
    Router::new()
        .route("/v1/embeddings", post(embeddings::create))
        .route("/embeddings", post(embeddings::create))
        .route("/v1/models", get(models::list))
        .route("/models", get(models::list))
        // Hub ids contain a slash: `{*id}` takes the rest of the path.
        .route("/v1/models/{*id}", get(models::retrieve))
        .route("/models/{*id}", get(models::retrieve))
        .route(
            "/admin/models/{*id}",
            post(models::admin_post).delete(models::admin_delete),
        )
        .fallback(error::unknown_route)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error while handling the request",
            )
            .into_response()
        }))
        .with_state(state)
}

/// `axum::Json` whose rejections are OpenAI envelopes with actionable messages.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError::from_json_rejection(
                rejection,
                state.max_body_bytes,
            )),
        }
    }
}
