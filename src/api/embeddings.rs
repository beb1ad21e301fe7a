//! `POST /v1/embeddings`: OpenAI's request and response, plus the `prompt_name` extension.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::input::RequestInput;
use super::json::ApiJson;
use super::resolve::{labelled, serve_model};
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::model::{EmbedOptions, Embedded, InputType};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    /// A string, an array of strings, an array of token ids or an array of such arrays.
    #[schema(value_type = Vec<String>)]
    pub input: RequestInput,
    /// `float` (default) or `base64` (little-endian f32).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Extension: a key of the model's `prompts`, prepended to every input.
    #[serde(default)]
    pub prompt_name: Option<String>,
    /// Extension: `false` refuses over-long inputs instead of truncating them.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Extension: `query` or `document` (also `search_query`, `search_document`, `passage`):
    /// an asymmetric model's route and prompt for the texts, as `encode_query` and
    /// `encode_document` pick them; the model's setting, or plain `encode()`, when left out.
    #[serde(default)]
    pub input_type: Option<InputType>,
    // `user` and any other field are accepted and ignored, as OpenAI clients send them.
}

/// Read from a string, so that any other JSON value is a wrong type for this field, not
/// (as serde_json says of a number where an enum belongs) broken JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum EncodingFormat {
    #[default]
    Float,
    /// Little-endian f32 bytes, base64-encoded: what openai-python asks for by default.
    Base64,
}

impl TryFrom<String> for EncodingFormat {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "float" => Ok(Self::Float),
            "base64" => Ok(Self::Base64),
            other => {
                // Echo at most a little of what the client sent.
                let shown: String = other.chars().take(32).collect();
                let more = if shown.len() < other.len() { "…" } else { "" };
                Err(format!(
                    "unknown encoding_format `{shown}{more}`: expected `float` or `base64`"
                ))
            }
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

/// The vector: floats, or base64 of little-endian f32 with `encoding_format: base64`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// OpenAI's embeddings route, also at `/embeddings` (clients given a base URL without `/v1`).
pub fn routes() -> ApiRouter {
    serve(utoipa_axum::routes!(create), &["/embeddings"])
}

/// OpenAI's embeddings: one vector per input.
#[utoipa::path(
    post,
    path = "/v1/embeddings",
    request_body = EmbeddingRequest,
    responses(
        (status = 200, body = EmbeddingResponse),
        (status = 400, description = "Invalid request, in OpenAI's error envelope"),
        (status = 404, description = "No such model"),
        (status = 429, description = "The model's queue is full"),
    ),
    tag = "embeddings"
)]
pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<EmbeddingRequest>,
) -> Response {
    let mut label = None;
    let response = embed(&state, request, &mut label).await;
    labelled(response, label)
}

/// The request's work; `label` gets the model's name once the model is known to exist.
async fn embed(
    state: &AppState,
    mut request: EmbeddingRequest,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    let span = tracing::Span::current();
    let count = request.input.0.len();
    span.record("inputs", count);
    if count == 0 {
        return Err(ApiError::bad_request(
            "input",
            "input must not be an empty array",
        ));
    }
    if count > state.limits.max_inputs_per_request {
        return Err(ApiError::bad_request(
            "input",
            format!(
                "{count} inputs in one request; at most {} are allowed (server.max_inputs_per_request)",
                state.limits.max_inputs_per_request
            ),
        ));
    }
    let model = serve_model(state, &request.model, label).await?;
    let options = EmbedOptions {
        prompt_name: request.prompt_name.take(),
        truncate: request.truncate,
        dimensions: request.dimensions,
        max_tokens: state.limits.max_tokens_per_request,
        token_input: None,
        input_type: request.input_type,
    };
    let inputs = std::mem::take(&mut request.input.0);
    let embedded = model.embed(inputs, options).await?;
    span.record("tokens", embedded.tokens);
    span.record("queue_ms", embedded.queued.as_secs_f64() * 1000.0);
    span.record("inference_ms", embedded.inference.as_secs_f64() * 1000.0);
    let floats = embedded.vectors.iter().map(Vec::len).sum();
    let body = encoding(floats, move || respond(embedded, &request)).await??;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// Responses of at most this many floats are encoded on the async task (about 20 ns a float):
/// the round trip through the blocking pool would cost more than the work.
const INLINE_RESPONSE_FLOATS: usize = 4096;

/// Runs `encode`, the encoding of a response of `floats` values, on this task when it is
/// small, else on the blocking pool.
pub(super) async fn encoding<T: Send + 'static>(
    floats: usize,
    encode: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    if floats <= INLINE_RESPONSE_FLOATS {
        Ok(encode())
    } else {
        blocking(encode).await
    }
}

/// `value` as a JSON answer of `floats` values, encoded off the async task when large.
pub(super) async fn json_answer<T: Serialize + Send + 'static>(
    floats: usize,
    value: T,
) -> Result<Response, ApiError> {
    let body = encoding(floats, move || serde_json::to_vec(&value)).await?;
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        )
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("embedding task failed: {e}"),
        )
    })
}

/// The response body: encoding a large answer is CPU work, so it runs on the blocking pool.
fn respond(embedded: Embedded, request: &EmbeddingRequest) -> Result<Vec<u8>, ApiError> {
    let format = request.encoding_format.unwrap_or_default();
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingObject {
            object: "embedding",
            index,
            embedding: encode(vector, format),
        })
        .collect();
    let tokens = embedded.tokens;
    let response = EmbeddingResponse {
        object: "list",
        data,
        model: &request.model,
        usage: Usage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    };
    serde_json::to_vec(&response).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the response: {e}"),
        )
    })
}

fn encode(vector: Vec<f32>, format: EncodingFormat) -> Vector {
    match format {
        EncodingFormat::Float => Vector::Float(vector),
        EncodingFormat::Base64 => {
            let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
            Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let Vector::Base64(text) = encode(vec![1.0, -2.5], EncodingFormat::Base64) else {
            panic!("expected base64")
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap();
        assert_eq!(
            bytes,
            [1.0f32.to_le_bytes(), (-2.5f32).to_le_bytes()].concat()
        );
    }
}
