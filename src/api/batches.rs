//! OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches/{batch_id}`, `GET /v1/batches`
//! and `POST /v1/batches/{batch_id}/cancel`. The batch runs in the background (`batch::engine`).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use super::jobs::{List, Owner, Page, blocking, service};
use super::json::ApiJson;
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::batch::BatchObject;

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .merge(serve(utoipa_axum::routes!(create, list), &[]))
        .merge(serve(utoipa_axum::routes!(retrieve), &[]))
        .merge(serve(utoipa_axum::routes!(cancel), &[]))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateBatch {
    /// A file uploaded with purpose `batch`: one request per line.
    input_file_id: String,
    /// `/v1/embeddings`.
    endpoint: String,
    /// `24h`.
    completion_window: String,
    /// Up to 16 string pairs, returned as they are.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
}

/// Creates a batch of `/v1/embeddings` requests from an uploaded file.
#[utoipa::path(post, path = "/v1/batches", request_body = CreateBatch, responses((status = 200, body = BatchObject)), tag = "batches")]
pub async fn create(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    ApiJson(request): ApiJson<CreateBatch>,
) -> Result<Json<BatchObject>, ApiError> {
    let batches = service(&state)?;
    let batch = blocking(move || {
        batches.create_batch(
            &owner,
            &request.input_file_id,
            &request.endpoint,
            &request.completion_window,
            request.metadata,
        )
    })
    .await?;
    Ok(Json(batch))
}

#[utoipa::path(get, path = "/v1/batches/{batch_id}", responses((status = 200, body = BatchObject)), tag = "batches")]
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let batches = service(&state)?;
    Ok(Json(
        blocking(move || batches.batch(&batch_id, &owner)).await?,
    ))
}

/// The caller's batches, newest first.
#[utoipa::path(get, path = "/v1/batches", params(Page), responses((status = 200, body = List<BatchObject>)), tag = "batches")]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    Query(page): Query<Page>,
) -> Result<Json<List<BatchObject>>, ApiError> {
    let batches = service(&state)?;
    let limit = page.limit()?;
    let (found, more) =
        blocking(move || batches.batches(&owner, page.after.as_deref(), limit)).await?;
    Ok(Json(List::of(found, more, |b| &b.id)))
}

/// Stops a batch: `cancelling` until what ran is written, then `cancelled`.
#[utoipa::path(post, path = "/v1/batches/{batch_id}/cancel", responses((status = 200, body = BatchObject)), tag = "batches")]
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    Path(batch_id): Path<String>,
) -> Result<Json<BatchObject>, ApiError> {
    let batches = service(&state)?;
    Ok(Json(
        blocking(move || batches.cancel(&batch_id, &owner)).await?,
    ))
}
