//! TEI's `POST /decode`: the text of token ids, as the model's tokenizer decodes them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::json::ApiJson;
use super::resolve::{labelled, requested_model, serve_model};
use super::routing::{ApiRouter, serve};
use super::state::AppState;

/// TEI's `/decode` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DecodeRequest {
    /// Token ids of one sequence, or a list of sequences.
    #[schema(value_type = Vec<Vec<u32>>)]
    ids: DecodeIds,
    /// The model; `server.default_model` when left out.
    #[serde(default)]
    model: Option<String>,
    /// Leave special tokens (`[CLS]`, `[SEP]`, padding) out of the text (default true).
    #[serde(default = "yes")]
    skip_special_tokens: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DecodeIds {
    One(Vec<u32>),
    Many(Vec<Vec<u32>>),
}

fn yes() -> bool {
    true
}

pub fn routes() -> ApiRouter {
    serve(utoipa_axum::routes!(decode), &[])
}

/// Decodes token ids into text: one text per sequence.
#[utoipa::path(
    post,
    path = "/decode",
    request_body = DecodeRequest,
    responses((status = 200, description = "One text per sequence", body = Vec<String>)),
    tag = "TEI"
)]
pub async fn decode(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<DecodeRequest>,
) -> Response {
    let mut label = None;
    let response = texts(&state, request, &mut label).await;
    labelled(response, label)
}

async fn texts(
    state: &AppState,
    request: DecodeRequest,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    let sequences = match request.ids {
        DecodeIds::One(ids) => vec![ids],
        DecodeIds::Many(sequences) => sequences,
    };
    let max_inputs = state.limits.max_inputs_per_request;
    if sequences.is_empty() || sequences.iter().all(Vec::is_empty) {
        return Err(ApiError::bad_request("ids", "ids must not be empty").code("empty"));
    }
    if sequences.len() > max_inputs {
        return Err(ApiError::bad_request(
            "ids",
            format!(
                "more than {max_inputs} sequences in one request; at most {max_inputs} are \
                 allowed (server.max_inputs_per_request)"
            ),
        ));
    }
    let name = requested_model(state, request.model.as_deref())?;
    let model = serve_model(state, &name, label).await?;
    let skip = request.skip_special_tokens;
    let max_tokens = state.limits.max_tokens_per_request;
    let texts =
        super::embeddings::blocking(move || model.decode(&sequences, skip, max_tokens)).await??;
    Ok(Json(texts).into_response())
}
