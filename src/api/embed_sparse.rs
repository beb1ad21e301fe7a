//! TEI's `POST /embed_sparse`: a sparse encoder's (SPLADE's) non-zero weight per vocabulary
//! token, for each input. Dense routes refuse a sparse encoder, naming this one: its vectors
//! span the vocabulary (30,522 floats for a BERT one, nearly all zeros), which no client of
//! `/v1/embeddings` expects.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::input::RequestInput;
use super::json::ApiJson;
use super::resolve::labelled;
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use super::tei::{text_model, text_options};
use crate::model::{InputType, SparseVector, TruncationDirection};

/// TEI's `/embed_sparse` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SparseRequest {
    /// A string or a list of strings; token ids are read as the model's own vocabulary.
    #[schema(value_type = Vec<String>)]
    inputs: RequestInput,
    /// The model; `server.default_model` when left out.
    #[serde(default)]
    model: Option<String>,
    /// `false` refuses over-long inputs instead of truncating them.
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<TruncationDirection>,
    /// A key of the model's prompts.
    #[serde(default)]
    prompt_name: Option<String>,
    /// `query` or `document` (also `search_query`, `search_document`, `passage`):
    /// an asymmetric model's route and prompt for the texts, as `encode_query` and
    /// `encode_document` pick them; the model's setting, or plain `encode()`, when left out.
    #[serde(default)]
    input_type: Option<InputType>,
}

/// One vocabulary token's weight.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SparseValue {
    index: u32,
    value: f32,
}

pub fn routes() -> ApiRouter {
    serve(utoipa_axum::routes!(embed_sparse), &[])
}

/// The non-zero weights of each input, by ascending vocabulary id.
#[utoipa::path(
    post,
    path = "/embed_sparse",
    request_body = SparseRequest,
    responses(
        (status = 200, description = "One list of non-zero weights per input", body = Vec<Vec<SparseValue>>),
        (status = 400, description = "Invalid request, or the model is not a sparse encoder"),
    ),
    tag = "TEI"
)]
pub async fn embed_sparse(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<SparseRequest>,
) -> Response {
    let mut label = None;
    let response = weights(&state, request, &mut label).await;
    labelled(response, label)
}

async fn weights(
    state: &AppState,
    request: SparseRequest,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    let RequestInput(inputs) = request.inputs;
    let model = text_model(state, &inputs, request.model.as_deref(), label).await?;
    let options = text_options(
        state,
        request.prompt_name,
        request.truncate,
        request.truncation_direction,
        request.input_type,
    );
    let (vectors, embedded) = model.embed_sparse(inputs, options).await?;
    tracing::Span::current().record("tokens", embedded.tokens);
    let answer: Vec<Vec<SparseValue>> = vectors
        .into_iter()
        .map(|SparseVector { indices, values }| {
            indices
                .into_iter()
                .zip(values)
                .map(|(index, value)| SparseValue { index, value })
                .collect()
        })
        .collect();
    Ok(Json(answer).into_response())
}
