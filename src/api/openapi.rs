//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, gathered by `utoipa` from
//! the routers the API modules return (see `routing`).

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::routing::{ApiRouter, serve};

#[derive(OpenApi)]
#[openapi(info(
    title = "embedserve",
    description = "OpenAI-compatible embeddings, Cohere/Jina-compatible reranking and \
                   TEI-compatible routes for sentence-transformers models in ONNX."
))]
struct ApiDoc;

/// The document, rendered once: every router a process builds has the same routes.
static DOCUMENT: OnceLock<String> = OnceLock::new();

/// A router holding this document's route, to merge the API's routers into.
pub fn router() -> ApiRouter {
    let mut api = ApiDoc::openapi();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    ApiRouter::with_openapi(api).merge(serve(utoipa_axum::routes!(document), &[]))
}

/// Publishes the document of the merged routers.
pub fn publish(document: utoipa::openapi::OpenApi) {
    DOCUMENT.get_or_init(|| {
        document
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    });
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 JSON")), tag = "operations")]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.get().map_or("{}", String::as_str),
    )
}
