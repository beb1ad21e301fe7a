//! `POST /v1/embeddings`: OpenAI's request and response, plus the `prompt_name` extension.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::input::RequestInput;
use super::middleware::ModelLabel;
use super::{ApiError, ApiJson, AppState};
use crate::model::{EmbedError, EmbedOptions, Embedding, l2_normalize};

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: RequestInput,
    #[serde(default)]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Extension: a key of the model's `prompts`, prepended to every input.
    #[serde(default)]
    pub prompt_name: Option<String>,
    /// Extension: `false` refuses over-long inputs instead of truncating them.
    #[serde(default)]
    pub truncate: Option<bool>,
    // `user` and any other field are accepted and ignored, as OpenAI clients send them.
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    /// Little-endian f32 bytes, base64-encoded: what openai-python asks for by default.
    Base64,
}

#[derive(Serialize)]
struct EmbeddingResponse<'a> {
    object: &'static str,
    data: Vec<EmbeddingObject>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingObject {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<EmbeddingRequest>,
) -> Response {
    let mut label = None;
    let mut response = embed(&state, request, &mut label)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    if let Some(model) = label {
        response.extensions_mut().insert(ModelLabel(model));
    }
    response
}

/// The request's work; `label` gets the model's name once the model is known to exist.
async fn embed(
    state: &AppState,
    request: EmbeddingRequest,
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
    let model = state.cache.get(&request.model).await?;
    span.record("model", model.name());
    *label = Some(model.name().to_string());
    if let Some(dimensions) = request.dimensions
        && !(1..=model.dimension()).contains(&dimensions)
    {
        return Err(ApiError::bad_request(
            "dimensions",
            format!(
                "dimensions must be between 1 and {} for model `{}`, got {dimensions}",
                model.dimension(),
                request.model
            ),
        ));
    }
    // Tokenizing (and looking up static embeddings) is CPU work: on the blocking pool, never
    // an async worker. Graph models run on their batcher thread, shared with other requests.
    let max_tokens = state.limits.max_tokens_per_request;
    let (started, request) = blocking(move || {
        let options = EmbedOptions {
            prompt_name: request.prompt_name.as_deref(),
            truncate: request.truncate,
            max_tokens,
        };
        (model.start(&request.input.0, &options), request)
    })
    .await?;
    let (embedding, tokens) = started?;
    span.record("tokens", tokens);
    let vectors = match embedding {
        Embedding::Ready(vectors) => vectors,
        // Dropping `pending` (the client went away) withdraws the inputs that have not run.
        Embedding::Queued(pending) => {
            let completed = pending.wait().await.map_err(EmbedError::from)?;
            span.record("queue_ms", completed.queued.as_secs_f64() * 1000.0);
            span.record("inference_ms", completed.inference.as_secs_f64() * 1000.0);
            completed.vectors
        }
    };
    let body = blocking(move || respond(vectors, tokens, &request)).await??;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("embedding task failed: {e}"),
        )
    })
}

fn respond(
    vectors: Vec<Vec<f32>>,
    tokens: usize,
    request: &EmbeddingRequest,
) -> Result<Vec<u8>, ApiError> {
    let format = request.encoding_format.unwrap_or_default();
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, mut vector)| {
            if let Some(dimensions) = request.dimensions {
                vector.truncate(dimensions);
                l2_normalize(&mut vector);
            }
            EmbeddingObject {
                object: "embedding",
                index,
                embedding: encode(vector, format),
            }
        })
        .collect();
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
