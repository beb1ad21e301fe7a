//! Reading a request body within bounds, before any work is done on it: at most
//! `server.max_body_bytes`, complete within `server.body_timeout` of the request's head,
//! and, across all connections together, at most `server.body_buffer_budget` bytes held in
//! bodies being read and parsed. A client that announces 16 MB and stalls after most of it
//! once held 15.6 MiB for five minutes (400 such: 6.2 GB); now it holds what it sent for
//! `body_timeout` at most, and the budget caps what all of them hold.
//!
//! A body reserves room for what has arrived, not for what it announces: reserving the
//! announcement let 17 connections that announced 16 MB and sent nothing hold the whole
//! budget, and every other body waited for them. Its first `FIRST_RESERVATION` bytes (all of
//! a usual request) it waits for, fairly, first come first served, within `body_timeout`;
//! room for more it takes only if the budget has it at once, else it gets 503 with
//! `Retry-After`: a body holding room never waits for more, so bodies cannot hold the budget
//! between them and wait for each other until all time out. A body that does not arrive in
//! time gets 408 (hyper closes a connection whose body was not read to its end).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::error::ApiError;
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

    fn kib(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib)
    }

    /// Room for `bytes`, waiting for it in turn.
    async fn reserve(&self, bytes: usize) -> Reservation {
        let kib = self.kib(bytes);
        let permit = self
            .kib
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the body budget is never closed");
        METRICS.body_bytes_reserved.add(i64::from(kib) * 1024);
        Reservation { permit }
    }

    /// Grows `reservation` to room for `bytes` if the budget has it now.
    fn grow(&self, reservation: &mut Reservation, bytes: usize) -> bool {
        let more = self
            .kib(bytes)
            .saturating_sub(reservation.permit.num_permits() as u32);
        if more == 0 {
            return true;
        }
        match self.kib.clone().try_acquire_many_owned(more) {
            Ok(permit) => {
                reservation.permit.merge(permit);
                METRICS.body_bytes_reserved.add(i64::from(more) * 1024);
                true
            }
            Err(_) => false,
        }
    }
}

/// A body's first bytes are reserved before it is read, waiting for room if need be.
const FIRST_RESERVATION: usize = 64 * 1024;

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
    let mut reservation =
        tokio::time::timeout_at(deadline, limits.budget.reserve(size.min(FIRST_RESERVATION)))
            .await
            .map_err(|_| no_room(Some(limits.timeout)))?;
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
                let held = buffer.len() + data.len();
                if held > limits.max_bytes {
                    return Err(too_large(limits.max_bytes));
                }
                if !limits.budget.grow(&mut reservation, held) {
                    return Err(no_room(None));
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

/// A body over `server.max_body_bytes`, announced or sent.
pub fn too_large(max_body_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the request body is larger than this server's limit of {max_body_bytes} bytes \
             (server.max_body_bytes); send fewer inputs per request"
        ),
    )
    .code("request_too_large")
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

/// 503: no room in the budget, for the body's first bytes within `timeout`, or at once for
/// the rest of it.
fn no_room(waited: Option<Duration>) -> ApiError {
    METRICS.bodies_refused.with_label_values(&["budget"]).inc();
    let found = match waited {
        Some(timeout) => format!(
            "found no room for this one within {}",
            humantime::format_duration(timeout)
        ),
        None => "has no room for the rest of this one".to_string(),
    };
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "the server is receiving too many request bodies at once (server.body_buffer_budget) \
             and {found}; retry shortly"
        ),
    )
    .code("server_busy")
    .retry_after(1)
}
