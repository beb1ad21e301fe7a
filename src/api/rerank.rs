//! `POST /v1/rerank` (also `/rerank` and Cohere's `/v2/rerank`): the request shape that
//! Cohere's and Jina's rerank APIs share, and TEI's `/rerank` shape on the same routes, told
//! apart by its `texts` field. Errors of a TEI-shaped request come in TEI's shape.

use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::error_shapes::TeiShaped;
use super::json::ApiJson;
use super::middleware::request_id;
use super::resolve::{labelled, requested_model, serve_model};
use super::routing::{ApiRouter, serve};
use super::state::AppState;
use crate::model::{RerankOptions, Reranked, TruncationDirection};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RerankRequest {
    /// The reranker; `server.default_model` when left out.
    #[serde(default)]
    model: Option<String>,
    query: String,
    /// Cohere and Jina: strings, or objects with a `text` field.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    documents: Option<Documents>,
    /// TEI: the documents, as strings.
    #[serde(default)]
    #[schema(value_type = Option<Vec<String>>)]
    texts: Option<Documents>,
    /// Return only the best `top_n` results (Cohere, Jina).
    #[serde(default)]
    top_n: Option<usize>,
    /// Echo each document in its result (Cohere, Jina); default false.
    #[serde(default)]
    return_documents: Option<bool>,
    /// Cut each document to this many tokens before pairing it (Cohere).
    #[serde(default)]
    max_tokens_per_doc: Option<usize>,
    /// TEI: scores before the activation (the raw logits).
    #[serde(default)]
    raw_scores: bool,
    /// TEI: echo each text in its result.
    #[serde(default)]
    return_text: bool,
    /// `false` refuses pairs longer than the model takes instead of truncating them.
    #[serde(default)]
    truncate: Option<bool>,
    /// TEI: which end of an over-long pair is cut; `Right` by default.
    #[serde(default)]
    truncation_direction: Option<TruncationDirection>,
}

/// The documents of a request: strings or `{"text": ...}` objects, at most
/// `server.max_inputs_per_request` of them, refused while they are read.
#[derive(Debug, Default)]
pub struct Documents(Vec<String>);

impl Documents {
    pub fn into_inner(self) -> Vec<String> {
        self.0
    }
}

impl<'de> Deserialize<'de> for Documents {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DocumentsVisitor;
        impl<'de> Visitor<'de> for DocumentsVisitor {
            type Value = Documents;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of strings or of objects with a `text` field")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Documents, A::Error> {
                let max = super::input::max_inputs();
                let mut documents = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max));
                while let Some(Document(text)) = seq.next_element()? {
                    if documents.len() == max {
                        return Err(de::Error::custom(format!(
                            "more than {max} documents in one request; at most {max} are \
                             allowed (server.max_inputs_per_request)"
                        )));
                    }
                    documents.push(text);
                }
                Ok(Documents(documents))
            }
        }
        deserializer.deserialize_seq(DocumentsVisitor)
    }
}

/// One document: a string, or an object whose `text` is the document (other fields, such
/// as Jina's or Cohere's metadata, are ignored).
struct Document(String);

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DocumentVisitor;
        impl<'de> Visitor<'de> for DocumentVisitor {
            type Value = Document;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an object with a string `text` field")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Document, E> {
                Ok(Document(text.to_string()))
            }

            fn visit_string<E: de::Error>(self, text: String) -> Result<Document, E> {
                Ok(Document(text))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
                let mut text = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "text" {
                        text = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                text.map(Document)
                    .ok_or_else(|| de::Error::custom("a document object needs a `text` field"))
            }
        }
        deserializer.deserialize_any(DocumentVisitor)
    }
}

/// Cohere's and Jina's response.
#[derive(Serialize, utoipa::ToSchema)]
pub struct RerankResponse {
    /// The request's `x-request-id`.
    id: String,
    model: String,
    results: Vec<RerankResult>,
    usage: RerankUsage,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RerankResult {
    index: usize,
    relevance_score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    document: Option<DocumentText>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DocumentText {
    text: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RerankUsage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// TEI's response: one rank per text, best first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Rank {
    index: usize,
    score: f32,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
}

/// The answer: Cohere's and Jina's shape to a request with `documents`, TEI's to one with
/// `texts`. (For the OpenAPI document; each shape is built on its own.)
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub enum RerankAnswer {
    Documents(RerankResponse),
    Texts(Vec<Rank>),
}

/// Where Cohere's clients post: its errors come in Cohere's shape (`error_shapes`).
pub const COHERE_PATH: &str = "/v2/rerank";

/// Reranking in Cohere's and Jina's shape (or TEI's, by the body), at each path their clients
/// post to.
pub fn routes() -> ApiRouter {
    serve(utoipa_axum::routes!(rerank), &[COHERE_PATH, "/rerank"])
}

/// Scores documents against a query with a cross-encoder.
#[utoipa::path(
    post,
    path = "/v1/rerank",
    request_body = RerankRequest,
    responses(
        (status = 200, description = "Ranked results, best first", body = RerankAnswer),
        (status = 400, description = "Invalid request, or the model is not a reranker \
                                      (OpenAI's envelope; TEI's shape for `texts` requests)"),
    ),
    tag = "rerank"
)]
pub async fn rerank(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<RerankRequest>,
) -> Response {
    let tei = request.texts.is_some() && request.documents.is_none();
    let mut label = None;
    let response = answer(&state, &headers, request, &mut label).await;
    let mut response = labelled(response, label);
    if tei {
        response.extensions_mut().insert(TeiShaped);
    }
    response
}

async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    request: RerankRequest,
    label: &mut Option<String>,
) -> Result<Response, ApiError> {
    let RerankRequest {
        model,
        query,
        documents,
        texts,
        top_n,
        return_documents,
        max_tokens_per_doc,
        raw_scores,
        return_text,
        truncate,
        truncation_direction,
    } = request;
    let (documents, tei) = match (documents, texts) {
        (Some(documents), None) => (documents.0, false),
        (None, Some(texts)) => (texts.0, true),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "documents",
                "send either `documents` (Cohere and Jina) or `texts` (TEI), not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::bad_request(
                "documents",
                "missing field `documents`: the texts to rank against the query",
            ));
        }
    };
    if documents.is_empty() {
        return Err(ApiError::bad_request(
            if tei { "texts" } else { "documents" },
            "there must be at least one document to rank",
        )
        .code("empty"));
    }
    if top_n == Some(0) {
        return Err(ApiError::bad_request("top_n", "top_n must be at least 1"));
    }
    if max_tokens_per_doc == Some(0) {
        return Err(ApiError::bad_request(
            "max_tokens_per_doc",
            "max_tokens_per_doc must be at least 1",
        ));
    }
    let truncation_direction = truncation_direction.unwrap_or_default();
    if max_tokens_per_doc.is_some() && truncation_direction == TruncationDirection::Left {
        return Err(ApiError::bad_request(
            "max_tokens_per_doc",
            "max_tokens_per_doc keeps each document's first tokens, and cannot be combined \
             with truncation_direction `Left`",
        ));
    }
    let name = requested_model(state, model.as_deref())?;
    let model = serve_model(state, &name, label).await?;
    let span = tracing::Span::current();
    span.record("inputs", documents.len());

    let options = RerankOptions {
        truncate,
        max_tokens: state.limits.max_tokens_per_request,
        max_tokens_per_document: max_tokens_per_doc,
        truncation_direction,
    };
    let documents = Arc::new(documents);
    let reranked = model.rerank(query, documents.clone(), options).await?;
    span.record("tokens", reranked.tokens);
    span.record("queue_ms", reranked.queued.as_secs_f64() * 1000.0);
    span.record("inference_ms", reranked.inference.as_secs_f64() * 1000.0);
    let documents = Arc::try_unwrap(documents).unwrap_or_else(|shared| (*shared).clone());
    if tei {
        let scores = if raw_scores {
            &reranked.logits
        } else {
            &reranked.scores
        };
        let ranks: Vec<Rank> = best_first(scores, None)
            .into_iter()
            .map(|index| Rank {
                index,
                score: scores[index],
                text: return_text.then(|| documents[index].clone()),
            })
            .collect();
        return Ok(axum::Json(ranks).into_response());
    }
    let tokens = reranked.tokens;
    let Reranked { scores, .. } = reranked;
    let mut documents = documents.into_iter().map(Some).collect::<Vec<_>>();
    let results = best_first(&scores, top_n)
        .into_iter()
        .map(|index| RerankResult {
            index,
            relevance_score: scores[index],
            document: return_documents.unwrap_or(false).then(|| DocumentText {
                text: documents[index].take().unwrap_or_default(),
            }),
        })
        .collect();
    Ok(axum::Json(RerankResponse {
        id: request_id(headers),
        model: name,
        results,
        usage: RerankUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
    .into_response())
}

/// Indices of `scores`, highest score first (ties in document order), at most `top_n`.
fn best_first(scores: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(top_n.unwrap_or(usize::MAX));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_best_first_with_ties_in_document_order() {
        assert_eq!(best_first(&[0.1, 0.9, 0.5, 0.9], None), [1, 3, 2, 0]);
        assert_eq!(best_first(&[0.1, 0.9, 0.5], Some(2)), [1, 2]);
        assert_eq!(best_first(&[0.1], Some(5)), [0]);
    }

    #[test]
    fn documents_are_strings_or_objects_with_text() {
        let parsed: Documents =
            serde_json::from_str(r#"["a", {"text": "b", "title": "ignored"}]"#).unwrap();
        assert_eq!(parsed.0, ["a", "b"]);
        let err = serde_json::from_str::<Documents>(r#"[{"title": "no text"}]"#).unwrap_err();
        assert!(err.to_string().contains("`text`"), "{err}");
        let over = super::super::input::with_max_inputs(2, || {
            serde_json::from_str::<Documents>(r#"["a", "b", "c"]"#)
        });
        assert!(over.unwrap_err().to_string().contains("more than 2"));
    }
}
