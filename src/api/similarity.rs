//! TEI's `POST /similarity`: the cosine similarity of a source sentence to each of a list of
//! sentences, embedded by the model. `huggingface_hub.InferenceClient.sentence_similarity`
//! posts the same body to the base URL, so `POST /` answers it too (`tei::root`).

use serde::Deserialize;

use super::error::ApiError;
use super::json::ApiJson;
use super::rerank::Documents;
use super::resolve::{labelled, requested_model, serve_model};
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::model::{EmbedOptions, Input, TokenInput, TruncationDirection};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SimilarityInput {
    source_sentence: String,
    #[schema(value_type = Vec<String>)]
    sentences: Documents,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct SimilarityParameters {
    #[serde(default)]
    prompt_name: Option<String>,
    #[serde(default)]
    truncate: Option<bool>,
    #[serde(default)]
    truncation_direction: Option<TruncationDirection>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SimilarityRequest {
    inputs: SimilarityInput,
    /// The model; `server.default_model` when left out.
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    parameters: Option<SimilarityParameters>,
}

impl SimilarityRequest {
    pub fn new(
        inputs: SimilarityInput,
        model: Option<String>,
        parameters: Option<SimilarityParameters>,
    ) -> Self {
        Self {
            inputs,
            model,
            parameters,
        }
    }
}

/// TEI's `/similarity`.
pub fn routes() -> ApiRouter {
    serve(utoipa_axum::routes!(similarity), &[])
}

/// Cosine similarities of `source_sentence` to each of `sentences`, in their order.
#[utoipa::path(
    post,
    path = "/similarity",
    request_body = SimilarityRequest,
    responses((status = 200, description = "One similarity per sentence", body = Vec<f32>)),
    tag = "TEI"
)]
pub async fn similarity(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<AppState>>,
    ApiJson(request): ApiJson<SimilarityRequest>,
) -> axum::response::Response {
    let mut label = None;
    let response = similarities(&state, request, &mut label).await;
    labelled(response, label)
}

pub async fn similarities(
    state: &AppState,
    request: SimilarityRequest,
    label: &mut Option<String>,
) -> Result<axum::response::Response, ApiError> {
    let SimilarityRequest {
        inputs,
        model,
        parameters,
    } = request;
    let parameters = parameters.unwrap_or_default();
    let sentences = inputs.sentences.into_inner();
    if sentences.is_empty() {
        return Err(
            ApiError::bad_request("inputs", "inputs.sentences must not be empty").code("empty"),
        );
    }
    let name = requested_model(state, model.as_deref())?;
    let model = serve_model(state, &name, label).await?;
    let mut texts = Vec::with_capacity(sentences.len() + 1);
    texts.push(Input::Text(inputs.source_sentence));
    texts.extend(sentences.into_iter().map(Input::Text));
    let options = EmbedOptions {
        prompt_name: parameters.prompt_name,
        truncate: parameters.truncate,
        dimensions: None,
        max_tokens: state.limits.max_tokens_per_request,
        max_tokens_per_input: None,
        truncation_direction: parameters.truncation_direction.unwrap_or_default(),
        token_input: Some(TokenInput::Native),
        input_type: None,
    };
    let embedded = model.embed(texts, options).await?;
    let Some((source, others)) = embedded.vectors.split_first() else {
        return Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the model returned no vectors",
        ));
    };
    let scores: Vec<f32> = others.iter().map(|v| cosine(source, v)).collect();
    Ok(axum::response::IntoResponse::into_response(axum::Json(
        scores,
    )))
}

/// sentence-transformers' `cos_sim`: each vector normalized (with its epsilon), then the dot
/// product.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    dot / (norm(a) * norm(b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cosine_of_parallel_orthogonal_and_zero_vectors() {
        assert!((super::cosine(&[1.0, 2.0], &[2.0, 4.0]) - 1.0).abs() < 1e-6);
        assert_eq!(super::cosine(&[1.0, 0.0], &[0.0, 3.0]), 0.0);
        assert_eq!(super::cosine(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
    }
}
