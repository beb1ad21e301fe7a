//! What the Files and Batch API routes share: the service (when `server.data_dir` turns it
//! on), the caller's key as the owner of what it makes, and errors in OpenAI's envelope.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::Deserialize;

use super::error::ApiError;
use super::middleware::bearer_token;
use super::state::AppState;
use crate::batch::{BatchError, Batches, owner_of};

/// The caller: a digest of its API key, or nobody in particular on a server without keys.
/// Another key's files and batches answer 404, as if they did not exist.
pub struct Owner(pub String);

impl FromRequestParts<Arc<AppState>> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        if state.api_keys.is_empty() {
            return Ok(Self(owner_of(None)));
        }
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token);
        Ok(Self(owner_of(key)))
    }
}

/// The service, or a 404 that says how to turn it on.
pub fn service(state: &AppState) -> Result<Arc<Batches>, ApiError> {
    state.batches.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "the Files and Batch API are off on this server: start it with --data-dir DIR \
             (server.data_dir)",
        )
        .code("not_found")
    })
}

/// Runs store work off the async runtime (`batch::blocking`), its error in OpenAI's envelope.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BatchError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(crate::batch::blocking(work).await?)
}

impl From<BatchError> for ApiError {
    fn from(error: BatchError) -> Self {
        let message = error.to_string();
        match error {
            BatchError::NotFound { code, .. } => {
                ApiError::new(StatusCode::NOT_FOUND, message).code(code)
            }
            BatchError::Invalid { param, .. } => ApiError::bad_request(param, message),
            BatchError::Quota(_) => ApiError::bad_request("file", message).code("quota_exceeded"),
            BatchError::Busy(_) => ApiError::new(StatusCode::TOO_MANY_REQUESTS, message)
                .code("batch_queue_full")
                .retry_after(60),
            BatchError::Elsewhere(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
                .code("replica_unavailable")
                .retry_after(5),
            BatchError::Storage(_) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message),
        }
    }
}

/// OpenAI's cursor pagination: `after` an id, `limit` of 1 to 100 (default 20).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct Page {
    pub after: Option<String>,
    pub limit: Option<usize>,
}

impl Page {
    pub fn limit(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(20),
            Some(limit @ 1..=100) => Ok(limit),
            Some(other) => Err(ApiError::bad_request(
                "limit",
                format!("limit must be between 1 and 100, got {other}"),
            )),
        }
    }
}

/// A page of objects in OpenAI's list shape.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct List<T> {
    pub object: &'static str,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> List<T> {
    pub fn of(data: Vec<T>, has_more: bool, id: impl Fn(&T) -> &str) -> Self {
        Self {
            object: "list",
            first_id: data.first().map(|t| id(t).to_string()),
            last_id: data.last().map(|t| id(t).to_string()),
            data,
            has_more,
        }
    }
}
