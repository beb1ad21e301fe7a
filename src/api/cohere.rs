//! Cohere's embed API, `POST /v2/embed` (and `/v1/embed`): `texts` in, vectors out by
//! `embedding_types` (several at once), as Cohere's clients send and read them. Errors come
//! in Cohere's `{"message"}` (`error_shapes`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::embeddings::{Output, Vector, encode, json_answer};
use super::error::ApiError;
use super::input::max_inputs;
use super::json::ApiJson;
use super::middleware::request_id;
use super::resolve::{labelled, requested_model, serve_model};
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::model::{EmbedOptions, Input, InputType, TruncationDirection};
use crate::quantize::Precision;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CohereEmbedRequest {
    /// The model; `server.default_model` when left out.
    #[serde(default)]
    model: Option<String>,
    /// The texts, at most `server.max_inputs_per_request`, refused while they are read.
    #[schema(value_type = Vec<String>)]
    texts: Texts,
    /// `search_document`, `search_query`, `classification` or `clustering`: the model's route
    /// and prompt for that task, as `input_type` picks them on `/v1/embeddings`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    input_type: Option<InputType>,
    /// Any of `float` (default), `int8`, `uint8`, `binary`, `ubinary` and `base64` (of
    /// little-endian f32): each in its own list of `embeddings`.
    #[serde(default)]
    embedding_types: Option<Vec<String>>,
    /// Matryoshka: keep this many leading dimensions, normalized again.
    #[serde(default)]
    output_dimension: Option<usize>,
    /// The most tokens each text embeds, special tokens included: a longer text is cut to
    /// its first tokens (or, with `truncate: NONE`, refused); at most the model's own length.
    #[serde(default)]
    max_tokens: Option<usize>,
    /// `END` (default) cuts long inputs at the end, `START` at the start; `NONE` refuses them.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    truncate: Option<Truncate>,
    /// Images and mixed inputs are not embedded here: refused.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    images: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    inputs: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum Truncate {
    None,
    Start,
    End,
}

/// Strings, at most `max_inputs()` of them, counted as they are read.
#[derive(Debug)]
struct Texts(Vec<String>);

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextsVisitor;
        impl<'de> Visitor<'de> for TextsVisitor {
            type Value = Texts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array of strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Texts, A::Error> {
                let max = max_inputs();
                let mut texts = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    if texts.len() == max {
                        return Err(de::Error::custom(format!(
                            "more than {max} texts in one request (server.max_inputs_per_request)"
                        )));
                    }
                    texts.push(text);
                }
                Ok(Texts(texts))
            }
        }
        deserializer.deserialize_seq(TextsVisitor)
    }
}

/// Cohere's answer: every asked type's vectors, in the texts' order.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CohereEmbedResponse {
    id: String,
    #[schema(value_type = Object)]
    embeddings: BTreeMap<&'static str, Vec<Vector>>,
    texts: Vec<String>,
    #[schema(value_type = Object)]
    meta: serde_json::Value,
    response_type: &'static str,
}

/// Cohere's embed route, at the paths of both its API versions.
pub fn routes() -> ApiRouter {
    serve(utoipa_axum::routes!(embed), &["/v1/embed"])
}

/// Cohere's embed: vectors of each asked type per text.
#[utoipa::path(
    post,
    path = "/v2/embed",
    request_body = CohereEmbedRequest,
    responses(
        (status = 200, body = CohereEmbedResponse),
        (status = 400, description = "Invalid request, as Cohere's `{\"message\"}`"),
        (status = 404, description = "No such model"),
    ),
    tag = "Cohere"
)]
pub async fn embed(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CohereEmbedRequest>,
) -> Response {
    let mut label = None;
    let response = answer(&state, request_id(&headers), request, &mut label).await;
    labelled(response, label)
}

async fn answer(
    state: &AppState,
    id: String,
    request: CohereEmbedRequest,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    if request.images.is_some() || request.inputs.is_some() {
        return Err(ApiError::bad_request(
            "texts",
            "only `texts` are embedded here: `images` and `inputs` are not supported",
        ));
    }
    let texts = request.texts.0;
    if texts.is_empty() {
        return Err(ApiError::bad_request("texts", "texts must not be empty"));
    }
    let types = embedding_types(request.embedding_types.as_deref())?;
    let (truncate, truncation_direction) = match request.truncate {
        None | Some(Truncate::End) => (None, TruncationDirection::Right),
        Some(Truncate::Start) => (None, TruncationDirection::Left),
        Some(Truncate::None) => (Some(false), TruncationDirection::Right),
    };
    let name = requested_model(state, request.model.as_deref())?;
    let model = serve_model(state, &name, label).await?;
    if request.max_tokens == Some(0) {
        return Err(ApiError::bad_request(
            "max_tokens",
            "max_tokens must be at least 1",
        ));
    }
    let dimensions = request.output_dimension;
    let options = EmbedOptions {
        truncate,
        dimensions,
        max_tokens: state.limits.max_tokens_per_request,
        max_tokens_per_input: request.max_tokens,
        truncation_direction,
        input_type: request.input_type,
        ..EmbedOptions::default()
    };
    let inputs = texts.iter().cloned().map(Input::Text).collect();
    let embedded = model.clone().embed(inputs, options).await?;
    let ranges = match types.iter().any(|(_, output)| output.needs_ranges()) {
        true => Some(model.int8_ranges(dimensions).await?.0),
        false => None,
    };
    let floats = embedded.vectors.iter().map(Vec::len).sum::<usize>() * types.len();
    let response = CohereEmbedResponse {
        id,
        embeddings: types
            .iter()
            .map(|&(name, output)| {
                let vectors = embedded.vectors.iter().cloned();
                let encoded = vectors.map(|v| encode(v, output, ranges.as_deref()));
                (name, encoded.collect())
            })
            .collect(),
        texts,
        meta: serde_json::json!({
            "api_version": {"version": "2"},
            "billed_units": {"input_tokens": embedded.tokens},
        }),
        response_type: "embeddings_by_type",
    };
    json_answer(floats, response).await
}

/// Each asked type's key in the answer and how its vectors are written.
fn embedding_types(asked: Option<&[String]>) -> Result<Vec<(&'static str, Output)>, ApiError> {
    let asked = asked.unwrap_or_default();
    if asked.is_empty() {
        return Ok(vec![("float", Output::default())]);
    }
    let mut types = Vec::new();
    for name in asked {
        let (key, output) = match name.as_str() {
            "base64" => ("base64", Output::base64_floats()),
            other => match Precision::parse(other) {
                Some(precision) => (precision.name(), Output::of(precision)),
                None => {
                    return Err(ApiError::bad_request(
                        "embedding_types",
                        format!(
                            "unknown embedding type `{}`: expected float, int8, uint8, binary, \
                             ubinary or base64",
                            other.chars().take(32).collect::<String>()
                        ),
                    ));
                }
            },
        };
        if !types.iter().any(|(k, _)| *k == key) {
            types.push((key, output));
        }
    }
    Ok(types)
}
