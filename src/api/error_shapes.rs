//! The error shapes of the APIs we speak besides OpenAI's: TEI's `{"error", "error_type"}`
//! on TEI's routes and for TEI-shaped rerank requests, and Cohere's `{"message"}` on Cohere's
//! routes. Handlers and middleware make OpenAI's envelope as everywhere, and this layer
//! rewrites it, so a 401, a 413 or a handler's 400 all come in the shape each client reads.

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

/// The paths of the routes that only TEI's clients call, and those only Cohere's call, as
/// axum matches them.
#[derive(Clone)]
pub struct ShapedPaths {
    tei: Arc<[String]>,
    cohere: Arc<[String]>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    OpenAi,
    Tei,
    Cohere,
}

impl ShapedPaths {
    /// The paths `tei` serves, and those `cohere` serves with `more_cohere`.
    pub fn of(tei: &ApiRouter, cohere: &ApiRouter, more_cohere: &[&str]) -> Self {
        let paths = |routes: &ApiRouter| {
            let paths = routes.get_openapi().paths.paths.keys();
            paths.map(|path| axum_path(path)).collect::<Vec<_>>()
        };
        let mut cohere = paths(cohere);
        cohere.extend(more_cohere.iter().map(|path| axum_path(path)));
        Self {
            tei: paths(tei).into(),
            cohere: cohere.into(),
        }
    }

    fn shape(&self, path: &str) -> Shape {
        if self.tei.iter().any(|p| p == path) {
            Shape::Tei
        } else if self.cohere.iter().any(|p| p == path) {
            Shape::Cohere
        } else {
            Shape::OpenAi
        }
    }
}

/// Rewrites the OpenAI envelope of an error into TEI's `{"error", "error_type"}` on TEI's
/// routes and for TEI-shaped requests (also at Cohere's rerank path), and into Cohere's
/// `{"message"}` on Cohere's routes,
/// whichever layer made it (authentication, the body limit, the handler).
pub async fn reshape_errors(
    State(paths): State<ShapedPaths>,
    request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>();
    let mut shape = route.map_or(Shape::OpenAi, |p| paths.shape(p.as_str()));
    let response = next.run(request).await;
    let status = response.status();
    if response.extensions().get::<TeiShaped>().is_some() {
        shape = Shape::Tei;
    }
    if status.is_success() || shape == Shape::OpenAi {
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
    parts.headers.remove(header::CONTENT_LENGTH);
    if shape == Shape::Cohere {
        let body = serde_json::json!({"message": message}).to_string();
        return Response::from_parts(parts, Body::from(body));
    }
    let error_type = match (status, error["code"].as_str()) {
        (StatusCode::TOO_MANY_REQUESTS, _) => "overloaded",
        (StatusCode::SERVICE_UNAVAILABLE, _) => "unhealthy",
        (s, _) if s.is_server_error() => "backend",
        (_, Some("empty")) => "empty",
        _ => "validation",
    };
    let body = serde_json::json!({"error": message, "error_type": error_type}).to_string();
    Response::from_parts(parts, Body::from(body))
}
