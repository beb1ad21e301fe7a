//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape, with the cache state of each
//! model as extension fields; and the admin routes that load and unload models explicitly.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;

use super::error::ApiError;
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::cache::CacheError;
use crate::echo::clip;
use crate::model::{RangesSource, Task};
use crate::quantize::Ranges;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelObject {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    /// Extension: what the model serves (`embedding` or `rerank`), when its files tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    task: Option<Task>,
    /// Extension: whether the model is in memory now.
    loaded: bool,
    /// Extension: whether the model is exempt from eviction.
    pinned: bool,
    /// Extension: resident memory its load added, when loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_bytes: Option<u64>,
    /// Extension, on `/v1/models/{id}` only: the full-width ranges its `int8` and `uint8`
    /// codes count steps of, once a request has needed them, and where they came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    int8_ranges: Option<Int8RangesObject>,
}

#[derive(Serialize)]
struct Int8RangesObject {
    source: RangesSource,
    #[serde(flatten)]
    ranges: Ranges,
}

#[derive(Serialize, utoipa::ToSchema)]
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

/// Reads the model's files (never loads it): call it off the async runtime.
fn model_object(id: String, state: &AppState) -> ModelObject {
    let cached = state.cache.state(&id);
    let catalog = state.cache.catalog();
    let task = catalog
        .lookup(&id)
        .and_then(|spec| {
            let config = spec.config;
            catalog
                .hub()
                .local_dir(&config.source, config.onnx_file.as_deref())
        })
        .and_then(|dir| Task::of_dir(&dir).ok());
    ModelObject {
        task,
        object: "model",
        created: state.started_at,
        owned_by: "embedserve",
        loaded: cached.loaded,
        pinned: cached.pinned,
        memory_bytes: cached.loaded.then_some(cached.memory_bytes),
        int8_ranges: None,
        id,
    }
}

/// The model list and objects, also without `/v1`, and the admin routes.
pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .merge(serve(utoipa_axum::routes!(list), &["/models"]))
        .merge(serve(utoipa_axum::routes!(retrieve), &["/models/{id}"]))
        .merge(serve(utoipa_axum::routes!(admin_post), &[]))
        .merge(serve(utoipa_axum::routes!(admin_delete), &[]))
}

/// Every listable model, then models loaded by Hub id on request (not enumerable otherwise).
#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)), tag = "models")]
pub async fn list(State(state): State<Arc<AppState>>) -> Result<Json<ModelList>, ApiError> {
    let listed = tokio::task::spawn_blocking(move || {
        let mut names = state.cache.catalog().names();
        for loaded in state.cache.loaded_names() {
            if !names.contains(&loaded) {
                names.push(loaded);
            }
        }
        names
            .into_iter()
            .map(|id| model_object(id, &state))
            .collect()
    })
    .await;
    let data = listed.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing the models failed: {e}"),
        )
    })?;
    Ok(Json(ModelList {
        object: "list",
        data,
    }))
}

#[utoipa::path(get, path = "/v1/models/{id}",
    params(("id" = String, Path, description = "A model id (may contain `/`)")),
    responses((status = 200, body = ModelObject), (status = 404, description = "No such model")),
    tag = "models")]
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    ModelPath(id): ModelPath,
) -> Result<Json<ModelObject>, ApiError> {
    let found = tokio::task::spawn_blocking(move || {
        state
            .cache
            .catalog()
            .lookup(&id)
            .map(|_| {
                let loaded = state.cache.loaded(&id);
                let ranges = loaded.and_then(|model| model.computed_int8_ranges());
                ModelObject {
                    int8_ranges: ranges.map(|(ranges, source)| Int8RangesObject {
                        source,
                        ranges: Ranges::clone(&ranges),
                    }),
                    ..model_object(id.clone(), &state)
                }
            })
            .ok_or(CacheError::NotFound(id))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(found?))
}

/// `POST /admin/models/{id}/load`: loads the model now (a no-op when loaded).
#[utoipa::path(post, path = "/admin/models/{id}/load",
    params(("id" = String, Path, description = "A model id")),
    responses((status = 200, body = ModelObject)), tag = "admin")]
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
    let id = id.to_string();
    let object = tokio::task::spawn_blocking(move || model_object(id, &state))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(object))
}

/// `DELETE /admin/models/{id}`: unloads the model (pinned or not); requests in flight finish.
#[utoipa::path(delete, path = "/admin/models/{id}",
    params(("id" = String, Path, description = "A model id")),
    responses((status = 200, description = "Whether it was loaded")), tag = "admin")]
pub async fn admin_delete(
    State(state): State<Arc<AppState>>,
    ModelPath(id): ModelPath,
) -> Result<Json<serde_json::Value>, ApiError> {
    let unloaded = state.cache.unload(&id)?;
    Ok(Json(
        serde_json::json!({"id": id, "object": "model", "unloaded": unloaded}),
    ))
}
