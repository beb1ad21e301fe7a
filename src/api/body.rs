//! Reading a request body within bounds, before any work is done on it: at most
//! `server.max_body_bytes`, complete within `server.body_timeout` of the request's head,
//! and, across all connections together, at most `server.body_buffer_budget` bytes held in
//! bodies being read and parsed. A client that announces 16 MB and stalls after most of it
//! once held 15.6 MiB for five minutes (400 such: 6.2 GB); now it holds its reservation for
//! `body_timeout` at most, and the budget caps what all of them hold.
//!
//! A body waits for room in the budget (fairly, first come first served) within its
//! `body_timeout`; past that it gets 503 with `Retry-After`. A body that does not arrive in
//! time gets 408, and its connection closes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ApiError;
use crate::connections::ConnectionActivity;
use crate::metrics::METRICS;

/// The bytes all bodies being read and parsed may hold, in KiB permits (a semaphore
/// counts in `u32`).
#[derive(Clone)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

impl BodyBudget {
    pub fn new(bytes: u64) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(Semaphore::MAX_PERMITS as u32);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    async fn reserve(&self, bytes: usize) -> Reservation {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        let permit = self
            .kib
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the body budget is never closed");
        METRICS.body_bytes_reserved.add(i64::from(kib) * 1024);
        Reservation { permit }
    }
}

/// Room for one body in the budget, held until the body is parsed.
pub struct Reservation {
    permit: OwnedSemaphorePermit,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let bytes = self.permit.num_permits() * 1024;
        METRICS.body_bytes_reserved.sub(bytes as i64);
        if bytes >= crate::memory::LARGE_REQUEST_BYTES {
            crate::memory::large_request_seen();
        }
    }
}

/// What bounds a body.
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
    pub budget: BodyBudget,
}

/// The body size a request's `Content-Length` announces.
pub fn announced_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads `request`'s body whole, within `limits`; the reservation must be held until what
/// the body becomes is parsed. (A body announced over the limit was refused already, before
/// `100 Continue`: `middleware::refuse_oversized_bodies`.)
pub async fn read(request: Request, limits: &BodyLimits) -> Result<(Bytes, Reservation), ApiError> {
    let deadline = Instant::now() + limits.timeout;
    // A body without a length may grow to the limit: it reserves the limit.
    let size = announced_length(request.headers())
        .and_then(|bytes| usize::try_from(bytes).ok())
        .map_or(limits.max_bytes, |bytes| bytes.min(limits.max_bytes));
    // While the body arrives the connection may be shed to make room for others: the
    // request has cost nothing yet.
    let _reading = request
        .extensions()
        .get::<ConnectInfo<ConnectionActivity>>()
        .map(|ConnectInfo(activity)| activity.reading_body());
    let reservation = tokio::time::timeout_at(deadline, limits.budget.reserve(size))
        .await
        .map_err(|_| no_room(limits.timeout))?;
    let mut body = request.into_body();
    let mut buffer = Vec::with_capacity(size);
    let collect = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("reading the body failed: {e}"),
                )
            })?;
            if let Ok(data) = frame.into_data() {
                if buffer.len() + data.len() > limits.max_bytes {
                    return Err(super::json::too_large(limits.max_bytes));
                }
                buffer.extend_from_slice(&data);
            }
        }
        Ok(())
    };
    tokio::time::timeout_at(deadline, collect)
        .await
        .map_err(|_| too_slow(limits.timeout))??;
    Ok((Bytes::from(buffer), reservation))
}

fn too_slow(timeout: Duration) -> ApiError {
    METRICS.bodies_refused.with_label_values(&["timeout"]).inc();
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {} of its head (server.body_timeout)",
            humantime::format_duration(timeout)
        ),
    )
    .code("body_timeout")
}

fn no_room(timeout: Duration) -> ApiError {
    METRICS.bodies_refused.with_label_values(&["budget"]).inc();
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the server is receiving too many request bodies at once (server.body_buffer_budget) \
             and found no room for this one within {}; retry shortly",
            humantime::format_duration(timeout)
        ),
    )
    .code("server_busy")
    .retry_after(1)
}
