//! TEI's error shape, `{"error", "error_type"}`, on TEI's routes and for TEI-shaped rerank
//! requests: handlers and middleware make OpenAI's envelope as everywhere, and this layer
//! rewrites it, so a 401, a 413 or a handler's 400 all come in the shape TEI's clients read.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::routing::{ApiRouter, axum_path};

/// Marks a response whose errors take TEI's shape (a TEI-shaped `/rerank` request).
#[derive(Clone, Copy)]
pub struct TeiShaped;

/// The paths of the routes that only TEI's clients call, as axum matches them.
#[derive(Clone)]
pub struct TeiPaths(Arc<[String]>);

impl TeiPaths {
    /// The paths `routes` serves.
    pub fn of(routes: &ApiRouter) -> Self {
        let paths = routes.get_openapi().paths.paths.keys();
        Self(paths.map(|path| axum_path(path)).collect())
    }

    fn contains(&self, path: &str) -> bool {
        self.0.iter().any(|p| p == path)
    }
}

/// Rewrites the OpenAI envelope of an error into TEI's `{"error", "error_type"}` on TEI's
/// routes and for TEI-shaped requests, whichever layer made it (authentication, the body
/// limit, the handler).
pub async fn tei_errors(
    State(tei_paths): State<TeiPaths>,
    request: Request,
    next: Next,
) -> Response {
    let tei_route = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|p| tei_paths.contains(p.as_str()));
    let response = next.run(request).await;
    let status = response.status();
    if status.is_success() || !(tei_route || response.extensions().get::<TeiShaped>().is_some()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Errors are small; a body that is not one of ours passes through unchanged.
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "error body unreadable").into_response();
    };
    let Ok(envelope) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let error = &envelope["error"];
    let message = error["message"].as_str().unwrap_or_default();
    let error_type = match (status, error["code"].as_str()) {
        (StatusCode::TOO_MANY_REQUESTS, _) => "overloaded",
        (StatusCode::SERVICE_UNAVAILABLE, _) => "unhealthy",
        (s, _) if s.is_server_error() => "backend",
        (_, Some("empty")) => "empty",
        _ => "validation",
    };
    let body = serde_json::json!({"error": message, "error_type": error_type}).to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
