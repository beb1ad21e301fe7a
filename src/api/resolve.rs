//! The model a request is for: the one it names or the default, loaded through the cache,
//! and the label its response's metrics carry.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::middleware::ModelLabel;
use super::state::AppState;

/// A handler's result as a response, labelled with the model it was for (once the model is
/// known to exist) for the request metrics.
pub fn labelled(result: Result<Response, ApiError>, model: Option<String>) -> Response {
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    if let Some(model) = model {
        response.extensions_mut().insert(ModelLabel(model));
    }
    response
}

/// The model `name`, loaded when needed, with the request span's `model` and the response's
/// metric label set once it is known to exist.
pub async fn serve_model(
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
pub fn requested_model(state: &AppState, model: Option<&str>) -> Result<String, ApiError> {
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
