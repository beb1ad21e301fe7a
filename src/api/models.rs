//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape, with the cache state of each
//! model as extension fields; and the admin routes that load and unload models explicitly.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::{ApiError, AppState};
use crate::cache::CacheError;

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
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    match state.cache.catalog().lookup(&id) {
        Some(_) => Ok(Json(model_object(id, &state))),
        None => Err(CacheError::NotFound(id).into()),
    }
}

/// `POST /admin/models/{id}/load`: loads the model now (a no-op when loaded).
pub async fn admin_post(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    // `{*path}` must end the route, so the `/load` suffix is taken off here.
    let Some(id) = path.strip_suffix("/load") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "unknown admin route /admin/models/{path}; use POST /admin/models/{{model}}/load"
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
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let unloaded = state.cache.unload(&id)?;
    Ok(Json(
        serde_json::json!({"id": id, "object": "model", "unloaded": unloaded}),
    ))
}
