//! The JSON body extractor of the API: the body is read within its bounds (`body`),
//! parsed off the async runtime when it is large, and a field that does not parse is named
//! by its path (`input[3]`, `truncate`) in the message and as the error's `param`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::body::Reservation;
use super::error::ApiError;
use super::state::AppState;

/// Bodies larger than this parse on the blocking pool: a 16 MiB body of token ids takes
/// tens of milliseconds to parse, too long to hold an async worker.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// A JSON request body; every way it can be wrong is an OpenAI envelope.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + Send + 'static> FromRequest<Arc<AppState>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let body = JsonBody::from_request(request, state).await?;
        body.parse().await.map(Self)
    }
}

/// A JSON request body read within its bounds but not parsed yet, for a route whose body's
/// shape depends on one of its fields (`POST /` reads `model` first). It holds its room in
/// the body budget until dropped.
pub struct JsonBody {
    bytes: Bytes,
    max_inputs: usize,
    _reservation: Reservation,
}

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the request body must be JSON sent with `Content-Type: application/json`",
            )
            .code("unsupported_media_type"));
        }
        let (bytes, reservation) = super::body::read(request, &state.body).await?;
        Ok(Self {
            bytes,
            max_inputs: state.limits.max_inputs_per_request,
            _reservation: reservation,
        })
    }
}

impl JsonBody {
    /// The body as `T`; a large body parses on the blocking pool.
    pub async fn parse<T: DeserializeOwned + Send + 'static>(&self) -> Result<T, ApiError> {
        let bytes = self.bytes.clone();
        let max_inputs = self.max_inputs;
        let parse = move || super::input::with_max_inputs(max_inputs, || parse(&bytes));
        if self.bytes.len() <= PARSE_INLINE_BYTES {
            return parse();
        }
        tokio::task::spawn_blocking(parse).await.map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("parsing the body failed: {e}"),
            )
        })?
    }
}

/// `application/json`, or any `+json` type, with or without parameters.
fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    let Some(essence) = content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
    else {
        return false;
    };
    let essence = essence.trim().to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(invalid_body)?;
    deserializer.end().map_err(not_json)?;
    Ok(value)
}

fn not_json(error: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("the request body is not valid JSON: {error}"),
    )
    .code("invalid_json")
}

fn invalid_body(error: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = error.path().to_string();
    let inner = error.into_inner();
    if !inner.is_data() {
        return not_json(inner);
    }
    // The top-level field the error is in; a missing field is named only by the message,
    // which may quote a value the client sent, so it is clipped.
    let message = crate::echo::clip_to(&inner.to_string(), 512).into_owned();
    let field = match path.split(['.', '[']).next() {
        Some(field) if !field.is_empty() && field != "?" => Some(field.to_string()),
        _ => message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string),
    };
    let message = if path == "." || path.is_empty() {
        message
    } else {
        format!("{path}: {message}")
    };
    let error = ApiError::new(StatusCode::BAD_REQUEST, message).code("invalid_request");
    match field {
        Some(field) => error.param(field),
        None => error,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        model: String,
        truncate: Option<bool>,
        input: Vec<u32>,
    }

    fn param_and_message(body: &str) -> (Option<String>, String) {
        let error = parse::<Body>(body.as_bytes()).unwrap_err();
        (
            error.param_name().map(str::to_string),
            error.message().to_string(),
        )
    }

    #[test]
    fn names_the_field_that_does_not_parse() {
        let (param, message) = param_and_message(r#"{"model":"m","input":[],"truncate":"yes"}"#);
        assert_eq!(param.as_deref(), Some("truncate"));
        assert!(message.starts_with("truncate: invalid type"), "{message}");
        let (param, message) = param_and_message(r#"{"model":"m","input":[1,"x"]}"#);
        assert_eq!(param.as_deref(), Some("input"));
        assert!(message.starts_with("input[1]: "), "{message}");
        let (param, _) = param_and_message(r#"{"input":[]}"#);
        assert_eq!(param.as_deref(), Some("model"));
    }

    #[test]
    fn broken_json_is_invalid_json() {
        let error = parse::<Body>(br#"{"model": "#).unwrap_err();
        assert_eq!(error.code_name(), Some("invalid_json"));
        let error = parse::<Body>(br#"{"model":"m","input":[]} trailing"#).unwrap_err();
        assert_eq!(error.code_name(), Some("invalid_json"));
    }

    #[test]
    fn json_content_types() {
        let json = |v: &'static str| is_json(Some(&header::HeaderValue::from_static(v)));
        assert!(json("application/json"));
        assert!(json("application/json; charset=utf-8"));
        assert!(json("application/vnd.api+json"));
        assert!(!json("text/plain"));
        assert!(!is_json(None));
    }
}
