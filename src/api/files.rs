//! OpenAI's Files API, for batch input and results: `POST /v1/files` (multipart, streamed to
//! disk, never held in memory), `GET /v1/files`, `GET /v1/files/{file_id}`,
//! `GET /v1/files/{file_id}/content` and `DELETE /v1/files/{file_id}`.
//!
//! An upload may take longer than `server.request_timeout` (200 MB over a slow link): its
//! time is bounded by its pace instead (`Pace`), and its disk by the quota as it arrives
//! (`UploadSpace`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::error::ApiError;
use super::jobs::{List, Owner, Page, blocking, service};
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::batch::{FileObject, UploadSpace};
use crate::echo::clip_to;

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .merge(serve(utoipa_axum::routes!(list), &[]))
        .merge(serve(utoipa_axum::routes!(retrieve, delete), &[]))
        .merge(serve(utoipa_axum::routes!(content), &[]))
}

/// `POST /v1/files`, outside `server.request_timeout`; its size is bounded as it is written
/// (`batches.max_file_bytes`), not by `server.max_body_bytes`.
pub fn upload_routes() -> ApiRouter {
    serve(utoipa_axum::routes!(upload), &[]).layer(DefaultBodyLimit::disable())
}

/// The slowest average an upload may keep once `server.body_timeout` has passed.
const MIN_UPLOAD_BYTES_PER_SECOND: f64 = 64.0 * 1024.0;

/// How fast an upload arrives: no step of it may stall for `server.body_timeout`, and past
/// that long it must average `MIN_UPLOAD_BYTES_PER_SECOND`. This, not the request timeout,
/// bounds how long a slow or stalled sender holds a connection.
struct Pace {
    started: Instant,
    grace: Duration,
    received: u64,
}

impl Pace {
    fn new(grace: Duration) -> Self {
        Self {
            started: Instant::now(),
            grace,
            received: 0,
        }
    }

    /// The next part of the body, unless the sender fell behind.
    async fn next<T>(
        &self,
        step: impl Future<Output = Result<T, MultipartError>>,
    ) -> Result<T, ApiError> {
        let grace = self.grace;
        let stalled = || {
            too_slow(format!(
                "the upload stalled for {} (server.body_timeout)",
                humantime::format_duration(grace)
            ))
        };
        let part = tokio::time::timeout(grace, step)
            .await
            .map_err(|_| stalled())?
            .map_err(bad_multipart)?;
        let late = self.started.elapsed().saturating_sub(grace);
        if (self.received as f64) < late.as_secs_f64() * MIN_UPLOAD_BYTES_PER_SECOND {
            return Err(too_slow(format!(
                "the upload arrived slower than {} KiB/s",
                MIN_UPLOAD_BYTES_PER_SECOND / 1024.0
            )));
        }
        Ok(part)
    }
}

fn too_slow(message: String) -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, message).code("body_timeout")
}

/// Removes an upload's temporary file unless it was kept.
struct Upload(Option<PathBuf>);

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn bad_multipart(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("file", format!("the multipart body cannot be read: {e}"))
}

/// Uploads a file of requests for a batch: multipart fields `purpose` (`batch`) and `file`.
#[utoipa::path(
    post,
    path = "/v1/files",
    request_body(content_type = "multipart/form-data", description = "`purpose=batch` and `file`"),
    responses((status = 200, body = FileObject)),
    tag = "batches"
)]
pub async fn upload(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Result<Json<FileObject>, ApiError> {
    let batches = service(&state)?;
    let max_bytes = batches.config.max_file_bytes;
    let room = batches.clone();
    let mut space = blocking(move || room.upload_space()).await?;
    // Refused before a byte is written when what it announces cannot fit.
    if let Some(announced) = super::body::announced_length(&headers) {
        space.grow_to(announced.min(max_bytes))?;
    }
    let mut pace = Pace::new(state.body.timeout);
    let mut purpose = None;
    let mut upload = Upload(None);
    let mut filename = String::new();
    while let Some(field) = pace.next(multipart.next_field()).await? {
        match field.name() {
            Some("purpose") => purpose = Some(small_text(field, &pace).await?),
            Some("file") if upload.0.is_none() => {
                filename = clip_to(field.file_name().unwrap_or("upload.jsonl"), 255).into_owned();
                let path = batches.upload_path();
                upload.0 = Some(path.clone());
                write_field(field, &path, max_bytes, &mut space, &mut pace).await?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "file",
                    format!(
                        "unexpected multipart field `{}`: send `purpose` and one `file`",
                        other.unwrap_or_default()
                    ),
                ));
            }
        }
    }
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "purpose",
                format!("purpose must be `batch`, got `{other}`"),
            ));
        }
        None => return Err(ApiError::bad_request("purpose", "missing field `purpose`")),
    }
    let Some(temp) = upload.0.clone() else {
        return Err(ApiError::bad_request("file", "missing field `file`"));
    };
    let file = blocking(move || batches.add_file(&temp, &filename, "batch", &owner)).await?;
    // Kept: no longer the upload's to remove, and counted among the files held.
    upload.0 = None;
    drop(space);
    Ok(Json(file))
}

/// A short text field, read up to 256 bytes.
async fn small_text(mut field: Field<'_>, pace: &Pace) -> Result<String, ApiError> {
    let mut text = Vec::new();
    while let Some(chunk) = pace.next(field.chunk()).await? {
        text.extend_from_slice(&chunk);
        if text.len() > 256 {
            return Err(ApiError::bad_request("purpose", "purpose is too long"));
        }
    }
    String::from_utf8(text).map_err(|_| ApiError::bad_request("purpose", "purpose is not UTF-8"))
}

/// Streams the `file` field to `path`, refusing it past `max_bytes`.
async fn write_field(
    mut field: Field<'_>,
    path: &std::path::Path,
    max_bytes: u64,
    space: &mut UploadSpace,
    pace: &mut Pace,
) -> Result<(), ApiError> {
    let storage = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot store the upload: {e}"),
        )
    };
    let mut file = tokio::fs::File::create(path).await.map_err(storage)?;
    let mut written = 0u64;
    while let Some(chunk) = pace.next(field.chunk()).await? {
        written += chunk.len() as u64;
        pace.received = written;
        if written > max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the file is larger than {max_bytes} bytes (batches.max_file_bytes)"),
            )
            .param("file")
            .code("file_too_large"));
        }
        space.grow_to(written)?;
        file.write_all(&chunk).await.map_err(storage)?;
    }
    file.flush().await.map_err(storage)?;
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct FileQuery {
    purpose: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

/// The caller's files, newest first.
#[utoipa::path(
    get,
    path = "/v1/files",
    params(FileQuery),
    responses((status = 200, body = List<FileObject>)),
    tag = "batches"
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    Query(query): Query<FileQuery>,
) -> Result<Json<List<FileObject>>, ApiError> {
    let batches = service(&state)?;
    let page = Page {
        after: query.after,
        limit: query.limit,
    };
    let limit = page.limit()?;
    let purpose = query.purpose;
    let (files, more) =
        blocking(move || batches.files(&owner, purpose.as_deref(), page.after.as_deref(), limit))
            .await?;
    Ok(Json(List::of(files, more, |f| &f.id)))
}

#[utoipa::path(get, path = "/v1/files/{file_id}", responses((status = 200, body = FileObject)), tag = "batches")]
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    Path(file_id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    let batches = service(&state)?;
    Ok(Json(
        blocking(move || batches.file(&file_id, &owner)).await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Deleted {
    id: String,
    object: &'static str,
    deleted: bool,
}

#[utoipa::path(delete, path = "/v1/files/{file_id}", responses((status = 200, body = Deleted)), tag = "batches")]
pub async fn delete(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    Path(file_id): Path<String>,
) -> Result<Json<Deleted>, ApiError> {
    let batches = service(&state)?;
    let id = file_id.clone();
    blocking(move || batches.delete_file(&id, &owner)).await?;
    Ok(Json(Deleted {
        id: file_id,
        object: "file",
        deleted: true,
    }))
}

/// A file's bytes, streamed from disk.
#[utoipa::path(get, path = "/v1/files/{file_id}/content", responses((status = 200, content_type = "application/jsonl")), tag = "batches")]
pub async fn content(
    State(state): State<Arc<AppState>>,
    Owner(owner): Owner,
    Path(file_id): Path<String>,
) -> Result<Response, ApiError> {
    let batches = service(&state)?;
    let path = blocking(move || batches.file_path(&file_id, &owner)).await?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the file's bytes are gone: {e}"),
        )
    })?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], body).into_response())
}
