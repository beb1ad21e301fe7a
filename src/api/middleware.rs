//! What wraps the routes: API-key authentication, per-request metrics, the request timeout
//! and the body limit announced by `Content-Length`, each answering in OpenAI's envelope.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::batch_lines::BatchLine;
use super::error::ApiError;
use super::state::AppState;
use crate::batch::priority::{REQUESTS, holds_batches_back};
use crate::metrics::METRICS;
// Constant-time: response time tells nothing about how much of a key was right.
use subtle::ConstantTimeEq;

/// The canonical model a response was for, for the `model` label of the request metrics.
/// Set only for models that exist, so clients cannot mint label values.
#[derive(Clone)]
pub struct ModelLabel(pub String);

/// Requires `Authorization: Bearer KEY` with one of the configured keys (layered only where
/// there are any).
pub async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if request.extensions().get::<BatchLine>().is_some() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let message = match presented {
        None => "no API key provided: send it as `Authorization: Bearer KEY`",
        Some(key)
            if state
                .api_keys
                .iter()
                .any(|k| bool::from(k.as_bytes().ct_eq(key.as_bytes()))) =>
        {
            return next.run(request).await;
        }
        Some(_) => "incorrect API key provided",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, message)
        .code("invalid_api_key")
        .into_response()
}

/// The token of an `Authorization: Bearer TOKEN` value; the scheme is case-insensitive
/// (RFC 9110), so `bearer` and `BEARER` work too.
pub(super) fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Counts each request by route, model and status, and times it; requests other than batch
/// lines hold batch work back while they run (`batch::priority`).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let batch_line = request.extensions().get::<BatchLine>().is_some();
    let _in_flight = (!batch_line && holds_batches_back(&route)).then(|| REQUESTS.begin());
    let started = Instant::now();
    let response = next.run(request).await;
    let model = response
        .extensions()
        .get::<ModelLabel>()
        .map_or("", |m| m.0.as_str());
    METRICS
        .requests
        .with_label_values(&[route.as_str(), model, response.status().as_str()])
        .inc();
    METRICS
        .request_seconds
        .with_label_values(&[route.as_str(), model])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Refuses a body that announces more than `server.max_body_bytes` before reading any of
/// it (and so before `Expect: 100-continue` is answered with `100 Continue`).
pub async fn refuse_oversized_bodies(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let announced = super::body::announced_length(request.headers());
    // Uploads are bounded by their own limit, as they are written to disk.
    let upload = request.uri().path() == "/v1/files" && state.batches.is_some();
    if !upload && announced.is_some_and(|bytes| bytes > state.body.max_bytes as u64) {
        return super::body::too_large(state.body.max_bytes).into_response();
    }
    next.run(request).await
}

/// Answers 408 when a request outlives `server.request_timeout`; dropping its future
/// withdraws its queued inputs.
pub async fn timeout(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let limit: Duration = state.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than this server's limit of {} (server.request_timeout)",
                humantime::format_duration(limit)
            ),
        )
        .code("timeout")
        .into_response(),
    }
}

/// The request's `x-request-id` (set by the request-id layer when the client sent none), as
/// the logs know it: the `id` of Cohere's and Jina's answers.
pub fn request_id(headers: &HeaderMap) -> String {
    let id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    id.unwrap_or_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer k1", "bearer k1", "BEARER  k1 ", "  Bearer k1"] {
            assert_eq!(bearer_token(value), Some("k1"), "{value:?}");
        }
        assert_eq!(bearer_token("Basic k1"), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
