//! TEI's `POST /embed_all`: every token's vector of each input, before pooling.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::embeddings::json_answer;
use super::error::ApiError;
use super::input::RequestInput;
use super::json::ApiJson;
use super::resolve::labelled;
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use super::tei::{text_model, text_options};
use crate::model::{InputType, TruncationDirection};

/// TEI's `/embed_all` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbedAllRequest {
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
    /// `query` or `document`: an asymmetric model's route.
    #[serde(default)]
    input_type: Option<InputType>,
}

pub fn routes() -> ApiRouter {
    serve(utoipa_axum::routes!(embed_all), &[])
}

/// Every token's vector of each input, as the transformer gives it (no pooling).
#[utoipa::path(
    post,
    path = "/embed_all",
    request_body = EmbedAllRequest,
    responses(
        (status = 200, description = "For each input, one vector per token", body = Vec<Vec<Vec<f32>>>),
        (status = 400, description = "Invalid request, too large an answer, or a model without token embeddings"),
    ),
    tag = "TEI"
)]
pub async fn embed_all(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<EmbedAllRequest>,
) -> Response {
    let mut label = None;
    let response = token_vectors(&state, request, &mut label).await;
    labelled(response, label)
}

async fn token_vectors(
    state: &AppState,
    request: EmbedAllRequest,
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
    let all = model.embed_all(inputs, options).await?;
    tracing::Span::current().record("tokens", all.tokens);
    let floats = all.vectors.iter().flatten().map(Vec::len).sum();
    json_answer(floats, all.vectors).await
}
