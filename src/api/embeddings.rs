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
use crate::model::{EmbedOptions, Embedded, InputType, TruncationDirection};
use crate::quantize::{self, Precision, Ranges};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EmbeddingRequest {
    pub model: String,
    /// A string, an array of strings, an array of token ids or an array of such arrays.
    #[schema(value_type = Vec<String>)]
    pub input: RequestInput,
    /// `float` (default) or `base64` (of little-endian f32, or of `output_dtype`'s bytes);
    /// extension: `int8`, `uint8`, `binary` or `ubinary`, arrays of integers (see
    /// `output_dtype`).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default)]
    pub dimensions: Option<usize>,
    /// Extension, as Voyage names it: `float`; `int8` / `uint8`, a byte per dimension, its
    /// place in the model's fixed per-dimension ranges; or `binary` / `ubinary`, one bit per
    /// dimension (`x > 0`) packed eight to a byte, first dimension in the highest bit, as
    /// signed (`ubinary - 128`) or unsigned bytes. Taken after `dimensions`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub output_dtype: Option<OutputDtype>,
    /// Extension, as Voyage names it: `dimensions`.
    #[serde(default)]
    pub output_dimension: Option<usize>,
    /// Extension: a key of the model's `prompts`, prepended to every input.
    #[serde(default)]
    pub prompt_name: Option<String>,
    /// Extension: `false` refuses over-long inputs instead of truncating them.
    #[serde(default)]
    pub truncate: Option<bool>,
    /// Extension, as TEI names it: `Left` cuts over-long inputs at their start (a prompt
    /// stays whole); `Right`, the default, at their end.
    #[serde(default)]
    pub truncation_direction: Option<TruncationDirection>,
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
    /// The vector's bytes, base64-encoded: what openai-python asks for by default.
    Base64,
    /// Arrays of integers of this precision.
    Quantized(Precision),
}

impl TryFrom<String> for EncodingFormat {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "float" => Ok(Self::Float),
            "base64" => Ok(Self::Base64),
            _ => match Precision::parse(&name) {
                Some(precision) => Ok(Self::Quantized(precision)),
                None => Err(unknown(
                    "encoding_format",
                    &name,
                    "float, base64, int8, uint8, binary or ubinary",
                )),
            },
        }
    }
}

/// Voyage's `output_dtype`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OutputDtype(Precision);

impl TryFrom<String> for OutputDtype {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        Precision::parse(&name).map(Self).ok_or_else(|| {
            unknown(
                "output_dtype",
                &name,
                "float, int8, uint8, binary or ubinary",
            )
        })
    }
}

/// Echoes at most a little of what the client sent.
fn unknown(field: &str, value: &str, expected: &str) -> String {
    let shown: String = value.chars().take(32).collect();
    let more = if shown.len() < value.len() { "…" } else { "" };
    format!("unknown {field} `{shown}{more}`: expected {expected}")
}

/// How the request wants its vectors written: each dimension's precision, and whether as
/// base64 of their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Output {
    precision: Precision,
    base64: bool,
}

impl Output {
    /// Arrays of `precision`'s values.
    pub(super) fn of(precision: Precision) -> Self {
        Self {
            precision,
            base64: false,
        }
    }

    /// Whether its codes count steps of the model's int8 ranges.
    pub(super) fn needs_ranges(self) -> bool {
        matches!(self.precision, Precision::Int8 | Precision::Uint8)
    }

    /// Base64 of little-endian f32.
    pub(super) fn base64_floats() -> Self {
        Self {
            precision: Precision::Float,
            base64: true,
        }
    }
}

impl EmbeddingRequest {
    /// `encoding_format` and Voyage's `output_dtype` together, and `dimensions` or
    /// Voyage's `output_dimension`; a request that gives both of a pair must agree.
    fn output(&self) -> Result<(Output, Option<usize>), ApiError> {
        let format = self.encoding_format.unwrap_or_default();
        let named = match format {
            EncodingFormat::Quantized(precision) => Some(precision),
            EncodingFormat::Float => Some(Precision::Float),
            EncodingFormat::Base64 => None,
        };
        let precision = match (named, self.output_dtype) {
            (Some(a), Some(OutputDtype(b))) if a != b && self.encoding_format.is_some() => {
                return Err(ApiError::bad_request(
                    "output_dtype",
                    format!("encoding_format `{a}` and output_dtype `{b}` disagree; give one"),
                ));
            }
            (_, Some(OutputDtype(precision))) => precision,
            (named, None) => named.unwrap_or_default(),
        };
        let dimensions = match (self.dimensions, self.output_dimension) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::bad_request(
                    "output_dimension",
                    format!("dimensions {a} and output_dimension {b} disagree; give one"),
                ));
            }
            (a, b) => a.or(b),
        };
        let base64 = format == EncodingFormat::Base64;
        Ok((Output { precision, base64 }, dimensions))
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

/// The vector: floats, signed or unsigned bytes, or base64 of little-endian f32 or of the
/// bytes with `encoding_format: base64`.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Signed(Vec<i8>),
    Unsigned(Vec<u8>),
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
    let (output, dimensions) = request.output()?;
    let model = serve_model(state, &request.model, label).await?;
    let options = EmbedOptions {
        prompt_name: request.prompt_name.take(),
        truncate: request.truncate,
        dimensions,
        max_tokens: state.limits.max_tokens_per_request,
        max_tokens_per_input: None,
        truncation_direction: request.truncation_direction.unwrap_or_default(),
        token_input: None,
        input_type: request.input_type,
    };
    let inputs = std::mem::take(&mut request.input.0);
    let embedded = model.clone().embed(inputs, options).await?;
    let ranges = match output.needs_ranges() {
        true => Some(model.int8_ranges(dimensions).await?.0),
        false => None,
    };
    span.record("tokens", embedded.tokens);
    span.record("queue_ms", embedded.queued.as_secs_f64() * 1000.0);
    span.record("inference_ms", embedded.inference.as_secs_f64() * 1000.0);
    let floats = embedded.vectors.iter().map(Vec::len).sum();
    let body = encoding(floats, move || {
        respond(embedded, &request, |vector| {
            encode(vector, output, ranges.as_deref())
        })
    })
    .await??;
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
fn respond(
    embedded: Embedded,
    request: &EmbeddingRequest,
    encode: impl Fn(Vec<f32>) -> Vector,
) -> Result<Vec<u8>, ApiError> {
    let data = embedded
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, vector)| EmbeddingObject {
            object: "embedding",
            index,
            embedding: encode(vector),
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

/// `vector` as `output` asks; `ranges` are the model's int8 ranges, for `int8` and `uint8`.
pub(super) fn encode(vector: Vec<f32>, output: Output, ranges: Option<&Ranges>) -> Vector {
    let signed = |bytes: Vec<i8>| bytes.into_iter().map(|b| b as u8).collect();
    let ranges = || ranges.expect("int8 ranges for byte codes");
    let bytes: Vec<u8> = match output.precision {
        Precision::Float if output.base64 => vector.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Precision::Float => return Vector::Float(vector),
        Precision::Int8 if output.base64 => signed(quantize::int8(&vector, ranges())),
        Precision::Int8 => return Vector::Signed(quantize::int8(&vector, ranges())),
        Precision::Uint8 => quantize::uint8(&vector, ranges()),
        Precision::Binary if output.base64 => signed(quantize::binary(&vector)),
        Precision::Binary => return Vector::Signed(quantize::binary(&vector)),
        Precision::Ubinary => quantize::ubinary(&vector),
    };
    if output.base64 {
        // A signed byte's base64 is its two's-complement byte's.
        Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
    } else {
        Vector::Unsigned(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_of(fields: serde_json::Value) -> Result<(Output, Option<usize>), ApiError> {
        let mut body = serde_json::json!({"model": "m", "input": "a"});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        serde_json::from_value::<EmbeddingRequest>(body)
            .unwrap()
            .output()
    }

    #[test]
    fn encoding_format_and_voyages_names_give_the_output() {
        use serde_json::json;
        let output = |precision, base64| Output { precision, base64 };
        let cases = [
            (json!({}), output(Precision::Float, false), None),
            (
                json!({"encoding_format": "base64"}),
                output(Precision::Float, true),
                None,
            ),
            (
                json!({"encoding_format": "ubinary", "dimensions": 64}),
                output(Precision::Ubinary, false),
                Some(64),
            ),
            (
                json!({"output_dtype": "binary"}),
                output(Precision::Binary, false),
                None,
            ),
            (
                json!({"output_dtype": "binary", "encoding_format": "base64", "output_dimension": 8}),
                output(Precision::Binary, true),
                Some(8),
            ),
            (
                json!({"output_dtype": "ubinary", "encoding_format": "ubinary"}),
                output(Precision::Ubinary, false),
                None,
            ),
            (
                json!({"dimensions": 8, "output_dimension": 8}),
                output(Precision::Float, false),
                Some(8),
            ),
        ];
        for (fields, want, dimensions) in cases {
            let got = output_of(fields.clone()).unwrap_or_else(|e| panic!("{fields}: {e:?}"));
            assert_eq!(got, (want, dimensions), "{fields}");
        }
        for fields in [
            json!({"output_dtype": "binary", "encoding_format": "float"}),
            json!({"output_dtype": "binary", "encoding_format": "ubinary"}),
            json!({"dimensions": 8, "output_dimension": 16}),
        ] {
            assert!(output_of(fields.clone()).is_err(), "{fields}");
        }
    }

    #[test]
    fn base64_is_little_endian_f32() {
        let output = Output {
            precision: Precision::Float,
            base64: true,
        };
        let Vector::Base64(text) = encode(vec![1.0, -2.5], output, None) else {
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
