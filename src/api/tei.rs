//! HuggingFace text-embeddings-inference's routes, so that TEI's clients work unmodified:
//! `POST /embed` (and `POST /`, where `huggingface_hub.InferenceClient` posts, which also
//! answers `/similarity`'s body), `POST /tokenize` and `GET /info`. TEI serves one model;
//! here `model` is an optional field (a query parameter for `/info`), else the server's
//! default model. Errors on these routes come in TEI's shape (`error_shapes`).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::embeddings::json_answer;
use super::error::ApiError;
use super::input::{InputVisitor, RequestInput};
use super::json::{ApiJson, JsonBody};
use super::predict::predictions;
use super::resolve::{labelled, requested_model, serve_model};
use super::routing::{ApiRouter, serve};
use super::similarity::{SimilarityInput, SimilarityParameters, SimilarityRequest, similarities};
use super::state::AppState;
use crate::model::{
    EmbedOptions, Input, InputType, Model, Task, TokenInput, TruncationDirection, l2_normalize,
};

/// TEI's `/embed` body; at `POST /` its `inputs` may also be `/similarity`'s object, which
/// is what `huggingface_hub.InferenceClient.sentence_similarity` posts to the base URL.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbedRequest {
    /// A string or a list of strings; token ids are read as the model's own vocabulary.
    #[schema(value_type = Vec<String>)]
    inputs: RootInputs,
    /// The model; `server.default_model` when left out.
    #[serde(default)]
    model: Option<String>,
    /// L2-normalize the vectors (TEI's default: true). `false` gives the model's own output,
    /// which for models that end in a Normalize module is unit-length too.
    #[serde(default)]
    normalize: Option<bool>,
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
    /// Matryoshka: keep this many leading dimensions.
    #[serde(default)]
    dimensions: Option<usize>,
    /// `/similarity`'s options, for a similarity body at `POST /`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    parameters: Option<SimilarityParameters>,
}

/// `inputs`: texts to embed, or (at `POST /`) a similarity question.
#[derive(Debug)]
pub enum RootInputs {
    Texts(RequestInput),
    Similarity(SimilarityInput),
}

impl<'de> Deserialize<'de> for RootInputs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RootVisitor;
        impl<'de> Visitor<'de> for RootVisitor {
            type Value = RootInputs;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(
                    "a string, an array of strings or token ids, or an object with \
                     `source_sentence` and `sentences`",
                )
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<RootInputs, E> {
                InputVisitor.visit_str(text).map(RootInputs::Texts)
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<RootInputs, E> {
                InputVisitor.visit_string(text).map(RootInputs::Texts)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RootInputs, A::Error> {
                InputVisitor.visit_seq(seq).map(RootInputs::Texts)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RootInputs, A::Error> {
                SimilarityInput::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RootInputs::Similarity)
            }
        }
        deserializer.deserialize_any(RootVisitor)
    }
}

/// TEI's own routes (`/similarity` is `similarity`'s).
pub fn routes() -> ApiRouter {
    [
        utoipa_axum::routes!(embed),
        utoipa_axum::routes!(root),
        utoipa_axum::routes!(tokenize),
        utoipa_axum::routes!(info),
    ]
    .into_iter()
    .fold(ApiRouter::new(), |router, route| {
        router.merge(serve(route, &[]))
    })
}

/// Embeds, or compares sentences, as the body says, or classifies for a classifier (TEI's
/// compatibility route).
#[utoipa::path(
    post,
    path = "/",
    request_body = EmbedRequest,
    responses((status = 200, description = "Vectors, as `/embed`; or similarities, as `/similarity`")),
    tag = "TEI"
)]
pub async fn root(State(state): State<Arc<AppState>>, body: JsonBody) -> Response {
    let mut label = None;
    let response = answer_root(&state, body, &mut label).await;
    labelled(response, label)
}

/// The model a `POST /` body names, read before the rest: its kind decides the body's shape.
#[derive(Deserialize)]
struct RootModel {
    #[serde(default)]
    model: Option<String>,
}

async fn answer_root(
    state: &AppState,
    body: JsonBody,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    // Most bodies here are `/embed`'s (where `feature_extraction` posts): they parse once. A
    // classifier's body is read again in `/predict`'s grammar, which also takes what `/embed`
    // refuses (a batch of pairs).
    let request = match body.parse::<EmbedRequest>().await {
        Ok(request) => {
            let name = requested_model(state, request.model.as_deref())?;
            if serve_model(state, &name, label).await?.task() == Task::Classification {
                return predictions(state, body.parse().await?, label).await;
            }
            request
        }
        Err(not_embed) => {
            let RootModel { model } = body.parse().await?;
            let name = requested_model(state, model.as_deref())?;
            if serve_model(state, &name, label).await?.task() == Task::Classification {
                return predictions(state, body.parse().await?, label).await;
            }
            return Err(not_embed);
        }
    };
    drop(body);
    match request.inputs {
        RootInputs::Similarity(inputs) => {
            let compare = SimilarityRequest::new(inputs, request.model, request.parameters);
            similarities(state, compare, label).await
        }
        RootInputs::Texts(_) => embed_vectors(state, request, label).await,
    }
}

/// Embeds `inputs`: one vector per input, as a JSON array of arrays.
#[utoipa::path(
    post,
    path = "/embed",
    request_body = EmbedRequest,
    responses((status = 200, description = "One vector per input", body = Vec<Vec<f32>>)),
    tag = "TEI"
)]
pub async fn embed(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<EmbedRequest>,
) -> Response {
    let mut label = None;
    let response = embed_vectors(&state, request, &mut label).await;
    labelled(response, label)
}

async fn embed_vectors(
    state: &AppState,
    request: EmbedRequest,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    let RootInputs::Texts(RequestInput(inputs)) = request.inputs else {
        return Err(ApiError::bad_request(
            "inputs",
            "inputs must be a string or a list: send source_sentence and sentences to \
             POST /similarity",
        ));
    };
    let model = text_model(state, &inputs, request.model.as_deref(), label).await?;
    let options = EmbedOptions {
        dimensions: request.dimensions,
        ..text_options(
            state,
            request.prompt_name,
            request.truncate,
            request.truncation_direction,
            request.input_type,
        )
    };
    let normalize = request.normalize.unwrap_or(true) && !model.normalizes();
    let mut embedded = model.embed(inputs, options).await?;
    tracing::Span::current().record("tokens", embedded.tokens);
    if normalize && request.dimensions.is_none() {
        embedded.vectors.iter_mut().for_each(|v| l2_normalize(v));
    }
    let floats = embedded.vectors.iter().map(Vec::len).sum();
    json_answer(floats, embedded.vectors).await
}

/// What TEI's text routes (`/embed`, `/embed_sparse`, `/embed_all`) check before a run:
/// inputs present; then the model, with the inputs on the
/// request's span.
pub(super) async fn text_model(
    state: &AppState,
    inputs: &[Input],
    model: Option<&str>,
    label: &mut Option<String>,
) -> Result<Arc<Model>, ApiError> {
    if inputs.is_empty() {
        return Err(ApiError::bad_request("inputs", "inputs must not be empty").code("empty"));
    }
    let name = requested_model(state, model)?;
    let model = serve_model(state, &name, label).await?;
    tracing::Span::current().record("inputs", inputs.len());
    Ok(model)
}

/// The options TEI's text routes run with: token ids are the model's own vocabulary, as in
/// TEI.
pub(super) fn text_options(
    state: &AppState,
    prompt_name: Option<String>,
    truncate: Option<bool>,
    truncation_direction: Option<TruncationDirection>,
    input_type: Option<InputType>,
) -> EmbedOptions {
    EmbedOptions {
        prompt_name,
        truncate,
        truncation_direction: truncation_direction.unwrap_or_default(),
        dimensions: None,
        max_tokens: state.limits.max_tokens_per_request,
        max_tokens_per_input: None,
        token_input: Some(TokenInput::Native),
        input_type,
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TokenizeRequest {
    /// A string or a list of strings.
    #[schema(value_type = Vec<String>)]
    inputs: RequestInput,
    #[serde(default)]
    model: Option<String>,
    #[serde(default = "yes")]
    add_special_tokens: bool,
    #[serde(default)]
    prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// Tokenizes `inputs` as the model does before embedding them (truncation included).
#[utoipa::path(
    post,
    path = "/tokenize",
    request_body = TokenizeRequest,
    responses((status = 200, description = "The tokens of each input",
               body = Vec<Vec<crate::model::Token>>)),
    tag = "TEI"
)]
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<TokenizeRequest>,
) -> Response {
    let mut label = None;
    let response = tokens(&state, request, &mut label).await;
    labelled(response, label)
}

async fn tokens(
    state: &AppState,
    request: TokenizeRequest,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    let mut texts = Vec::with_capacity(request.inputs.0.len());
    for (i, input) in request.inputs.0.into_iter().enumerate() {
        match input {
            crate::model::Input::Text(text) => texts.push(text),
            crate::model::Input::Tokens(_) => {
                return Err(ApiError::bad_request(
                    "inputs",
                    format!("inputs[{i}] is not a string: only text can be tokenized"),
                ));
            }
        }
    }
    let name = requested_model(state, request.model.as_deref())?;
    let model = serve_model(state, &name, label).await?;
    let add_special_tokens = request.add_special_tokens;
    let prompt_name = request.prompt_name;
    let max_tokens = state.limits.max_tokens_per_request;
    let tokens = super::embeddings::blocking(move || {
        model.tokens(
            &texts,
            prompt_name.as_deref(),
            add_special_tokens,
            max_tokens,
        )
    })
    .await??;
    Ok(axum::Json(tokens).into_response())
}

#[derive(Debug, Deserialize)]
pub struct InfoQuery {
    model: Option<String>,
}

/// TEI's `/info`, for the default model (or `?model=`), loading it when needed.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Info {
    model_id: String,
    model_sha: Option<String>,
    model_dtype: &'static str,
    #[schema(value_type = Object)]
    model_type: serde_json::Value,
    max_concurrent_requests: usize,
    max_input_length: usize,
    max_batch_tokens: usize,
    max_batch_requests: Option<usize>,
    max_client_batch_size: usize,
    auto_truncate: bool,
    tokenization_workers: usize,
    version: &'static str,
    sha: Option<String>,
    docker_label: Option<String>,
}

/// What the server runs: the model, its task and limits, as TEI describes itself.
#[utoipa::path(
    get,
    path = "/info",
    params(("model" = Option<String>, Query, description = "The model; the default model when left out")),
    responses((status = 200, description = "The model and its limits", body = Info)),
    tag = "TEI"
)]
pub async fn info(State(state): State<Arc<AppState>>, Query(query): Query<InfoQuery>) -> Response {
    let mut label = None;
    let response = describe(&state, query, &mut label).await;
    labelled(response, label)
}

async fn describe(
    state: &AppState,
    query: InfoQuery,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    let name = requested_model(state, query.model.as_deref())?;
    let model = serve_model(state, &name, label).await?;
    let model_type = match model.task() {
        Task::Embedding => serde_json::json!({"embedding": {
            "pooling": model.pooling().map_or_else(|| "in the graph".to_string(), |p| p.name())
        }}),
        // TEI's name for SPLADE pooling.
        Task::SparseEmbedding => serde_json::json!({"embedding": {"pooling": "splade"}}),
        task @ (Task::Rerank | Task::Classification) => {
            let id2label = model.labels().cloned().unwrap_or_default();
            let label2id: serde_json::Map<String, serde_json::Value> = id2label
                .iter()
                .map(|(id, label)| (label.clone(), id.parse::<u64>().unwrap_or(0).into()))
                .collect();
            // TEI's names for the two.
            let kind = if task == Task::Rerank {
                "reranker"
            } else {
                "classifier"
            };
            serde_json::json!({kind: {"id2label": id2label, "label2id": label2id}})
        }
    };
    let limits = model.batch_limits();
    let parallelism = std::thread::available_parallelism().map_or(1, usize::from);
    let info = Info {
        model_id: name,
        model_sha: None,
        model_dtype: model.dtype(),
        model_type,
        max_concurrent_requests: limits.map_or(usize::MAX, |l| l.max_queued_inputs),
        max_input_length: model.max_seq_length().unwrap_or(usize::MAX),
        max_batch_tokens: limits.map_or(usize::MAX, |l| l.max_batch_tokens),
        max_batch_requests: limits.map(|l| l.max_batch_size),
        max_client_batch_size: state.limits.max_inputs_per_request,
        auto_truncate: true,
        tokenization_workers: parallelism,
        version: env!("CARGO_PKG_VERSION"),
        sha: None,
        docker_label: None,
    };
    Ok(axum::Json(info).into_response())
}
