//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shape.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::cache::CacheError;

#[derive(Serialize)]
pub struct ModelObject {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

#[derive(Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

fn model_object(id: String, state: &AppState) -> ModelObject {
    ModelObject {
        id,
        object: "model",
        created: state.started_at,
        owned_by: "embedserve",
    }
}

pub async fn list(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    let data = state
        .cache
        .catalog()
        .entries()
        .into_iter()
        .map(|entry| model_object(entry.id, &state))
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
