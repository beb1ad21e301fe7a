//! `GET /openapi.json`: the OpenAPI 3.1 description of every route, derived by `utoipa` from
//! the handlers and their request and response types.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "embedserve",
        description = "OpenAI-compatible embeddings, Cohere/Jina-compatible reranking and \
                       TEI-compatible routes for sentence-transformers models in ONNX."
    ),
    paths(
        super::embeddings::create,
        super::rerank::rerank,
        super::tei::embed,
        super::tei::root,
        super::similarity::similarity,
        super::tei::tokenize,
        super::tei::info,
        super::models::list,
        super::models::retrieve,
        super::models::admin_post,
        super::models::admin_delete,
        super::ops::health,
        super::ops::ready,
        super::ops::metrics,
        document,
    )
)]
struct ApiDoc;

/// Routes that answer exactly as another one does.
const ALIASES: [(&str, &str); 5] = [
    ("/embeddings", "/v1/embeddings"),
    ("/rerank", "/v1/rerank"),
    ("/v2/rerank", "/v1/rerank"),
    ("/models", "/v1/models"),
    ("/models/{id}", "/v1/models/{id}"),
];

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut api = ApiDoc::openapi();
    api.info.version = env!("CARGO_PKG_VERSION").to_string();
    for (alias, route) in ALIASES {
        if let Some(item) = api.paths.paths.get(route).cloned() {
            api.paths.paths.insert(alias.to_string(), item);
        }
    }
    api.to_pretty_json()
        .expect("the OpenAPI document serializes")
});

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 JSON")), tag = "operations")]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}
