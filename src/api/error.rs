//! The one error type of the HTTP API, rendered as OpenAI's envelope
//! `{"error":{"message","type","param","code"}}` so every OpenAI client can read it.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::batcher::BatchError;
use crate::cache::CacheError;
use crate::model::EmbedError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    param: Option<&'static str>,
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

    pub fn param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Maps axum's JSON body rejections; `max_body_bytes` makes the 413 message actionable.
    pub fn from_json_rejection(rejection: JsonRejection, max_body_bytes: usize) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the request body must be JSON sent with `Content-Type: application/json`",
            )
            .code("unsupported_media_type"),
            JsonRejection::JsonSyntaxError(e) => Self::new(
                StatusCode::BAD_REQUEST,
                format!("the request body is not valid JSON: {}", e.body_text()),
            )
            .code("invalid_json"),
            JsonRejection::JsonDataError(e) => {
                let text = e.body_text();
                let message = text
                    .strip_prefix("Failed to deserialize the JSON body into the target type: ")
                    .unwrap_or(&text);
                let error = Self::new(StatusCode::BAD_REQUEST, message).code("invalid_request");
                match field_of(message) {
                    Some(field) => error.param(field),
                    None => error,
                }
            }
            rejection if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than this server's limit of {max_body_bytes} bytes \
                     (server.max_body_bytes); send fewer inputs per request"
                ),
            )
            .code("request_too_large"),
            rejection => Self::new(rejection.status(), rejection.body_text()),
        }
    }
}

/// The request field a serde message is about: `input[0]: ...` or ``missing field `model` ``.
fn field_of(message: &str) -> Option<&'static str> {
    const FIELDS: [&str; 5] = [
        "model",
        "input",
        "encoding_format",
        "dimensions",
        "prompt_name",
    ];
    let path_root = message.split([':', '[', '.']).next().unwrap_or_default();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    FIELDS
        .into_iter()
        .find(|field| path_root == *field || missing == Some(*field))
}

impl From<CacheError> for ApiError {
    fn from(error: CacheError) -> Self {
        match &error {
            CacheError::NotFound(_) => Self::new(
                StatusCode::NOT_FOUND,
                format!("{error}; GET /v1/models lists the models this server can serve"),
            )
            .param("model")
            .code("model_not_found"),
            CacheError::Load { .. } => {
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
                    .code("model_load_failed")
            }
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
            "unknown route {method} {}; this server answers POST /v1/embeddings, GET /v1/models \
             and GET /v1/models/{{model}}",
            uri.path()
        ),
    )
    .code("not_found")
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not accept {method}", uri.path()),
    )
    .code("method_not_allowed")
}
