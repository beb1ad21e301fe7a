//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape, with the cache state of each
//! model as extension fields; and the admin routes that load and unload models explicitly.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::cache::CacheError;
use crate::echo::clip;

#[derive(Serialize)]
pub struct ModelObject {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    /// Extension: whether the model is in memory now.
    loaded: bool,
    /// Extension: whether the model is exempt from eviction.
    pinned: bool,
    /// Extension: resident memory its load added, when loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_bytes: Option<u64>,
}

#[derive(Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

/// The model id at the end of a route's path, percent-decoded; a path that does not decode
/// to UTF-8 (`/v1/models/%ff%fe`) gets a 400 in OpenAI's envelope, not axum's plain text.
pub struct ModelPath(String);

impl<S: Send + Sync> FromRequestParts<S> for ModelPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(rejection) => Err(ApiError::bad_request(
                "model",
                format!(
                    "the model id in the path is not valid: {}",
                    rejection.body_text()
                ),
            )
            .code("invalid_path")),
        }
    }
}

fn model_object(id: String, state: &AppState) -> ModelObject {
    let cached = state.cache.state(&id);
    ModelObject {
        object: "model",
        created: state.started_at,
        owned_by: "embedserve",
        loaded: cached.loaded,
        pinned: cached.pinned,
        memory_bytes: cached.loaded.then_some(cached.memory_bytes),
        id,
    }
}

/// Every listable model, then models loaded by Hub id on request (not enumerable otherwise).
pub async fn list(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let mut names = state.cache.catalog().names();
    for loaded in state.cache.loaded_names() {
        if !names.contains(&loaded) {
            names.push(loaded);
        }
    }
    let data = names
        .into_iter()
        .map(|id| model_object(id, &state))
        .collect();
    Json(ModelList {
        object: "list",
        data,
    })
}

pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    ModelPath(id): ModelPath,
) -> Result<Json<ModelObject>, ApiError> {
    match state.cache.catalog().lookup(&id) {
        Some(_) => Ok(Json(model_object(id, &state))),
        None => Err(CacheError::NotFound(id).into()),
    }
}

/// `POST /admin/models/{id}/load`: loads the model now (a no-op when loaded).
pub async fn admin_post(
    State(state): State<Arc<AppState>>,
    ModelPath(path): ModelPath,
) -> Result<Json<ModelObject>, ApiError> {
    // `{*path}` must end the route, so the `/load` suffix is taken off here.
    let Some(id) = path.strip_suffix("/load") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown admin route /admin/models/{}; use POST /admin/models/{{model}}/load",
                clip(&path)
            ),
        )
        .code("not_found"));
    };
    state.cache.get(id).await?;
    Ok(Json(model_object(id.to_string(), &state)))
}

/// `DELETE /admin/models/{id}`: unloads the model (pinned or not); requests in flight finish.
pub async fn admin_delete(
    State(state): State<Arc<AppState>>,
    ModelPath(id): ModelPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let unloaded = state.cache.unload(&id)?;
    Ok(Json(
        serde_json::json!({"id": id, "object": "model", "unloaded": unloaded}),
    ))
}
