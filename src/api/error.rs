//! The one error type of the HTTP API, rendered as OpenAI's envelope
//! `{"error":{"message","type","param","code"}}` so every OpenAI client can read it.

use std::borrow::Cow;

use axum::Json;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::batcher::BatchError;
use crate::cache::CacheError;
use crate::echo::clip;
use crate::model::EmbedError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<Cow<'static, str>>,
    code: Option<&'static str>,
    /// Seconds for the `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            code: None,
            retry_after: None,
        }
    }

    pub fn bad_request(param: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message).param(param)
    }

    pub fn param(mut self, param: impl Into<Cow<'static, str>>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets `Retry-After`: the client may try again in `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn param_name(&self) -> Option<&str> {
        self.param.as_deref()
    }

    pub fn code_name(&self) -> Option<&'static str> {
        self.code
    }
}

/// `message` with every absolute path shortened to its last two components: clients learn
/// which file of the model failed, not where the server keeps it (the log has it all).
pub fn without_server_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find('/') {
        let starts_path = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| c.is_whitespace() || "`'\"([{=:".contains(c));
        if !starts_path {
            out.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            continue;
        }
        out.push_str(&rest[..at]);
        let path = &rest[at..];
        let end = path
            .find(|c: char| c.is_whitespace() || "`'\")]},;".contains(c))
            .unwrap_or(path.len());
        let components: Vec<&str> = path[..end].split('/').filter(|c| !c.is_empty()).collect();
        if components.len() > 2 {
            out.push_str(".../");
            out.push_str(&components[components.len() - 2..].join("/"));
        } else {
            out.push_str(&path[..end]);
        }
        rest = &path[end..];
    }
    out.push_str(rest);
    out
}

impl From<CacheError> for ApiError {
    fn from(error: CacheError) -> Self {
        match &error {
            CacheError::NotFound(name) => Self::new(
                StatusCode::NOT_FOUND,
                format!(
                    "the model `{}` does not exist; GET /v1/models lists the models this \
                     server can serve",
                    clip(name)
                ),
            )
            .param("model")
            .code("model_not_found"),
            CacheError::Load { .. } => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                without_server_paths(&error.to_string()),
            )
            .code("model_load_failed"),
        }
    }
}

impl From<EmbedError> for ApiError {
    fn from(error: EmbedError) -> Self {
        match error {
            EmbedError::Invalid { param, message } => Self::bad_request(param, message),
            EmbedError::Batch(full @ BatchError::QueueFull { .. }) => {
                let mut error =
                    Self::new(StatusCode::TOO_MANY_REQUESTS, full.to_string()).code("queue_full");
                error.retry_after = Some(1);
                error
            }
            other => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
                .code("inference_failed"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = if self.status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        let body = json!({
            "error": {
                "message": self.message,
                "type": kind,
                "param": self.param,
                "code": self.code,
            }
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

pub async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "unknown route {method} {}; this server answers POST /v1/embeddings, POST \
             /v1/rerank, GET /v1/models, TEI's POST /embed, /rerank and /tokenize and GET /info; \
             GET /openapi.json describes them all",
            clip(uri.path())
        ),
    )
    .code("not_found")
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", clip(uri.path())),
    )
    .code("method_not_allowed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_keep_their_last_two_components() {
        assert_eq!(
            without_server_paths(
                "the model `m` could not be loaded: /srv/models/org/m/onnx/model.onnx: no such \
                 file (in `/srv/models/org/m`)"
            ),
            "the model `m` could not be loaded: .../onnx/model.onnx: no such file (in \
             `.../org/m`)"
        );
        assert_eq!(
            without_server_paths("org/name and 1_Pooling/config.json stay; so does /tmp"),
            "org/name and 1_Pooling/config.json stay; so does /tmp"
        );
    }
}
