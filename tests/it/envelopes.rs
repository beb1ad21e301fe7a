//! Errors that need no model, answered by the router in process (no server, no socket):
//! each is OpenAI's envelope with the right status, `code` and `param`.

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, header};
use embedserve::api::{Readiness, router};
use embedserve::config::{Config, Overrides, ServerFlags};
use embedserve::server::{app_state, start_cache};
use serde_json::Value;
use tower::ServiceExt;

/// The router, built once: ONNX Runtime allows one environment per process, and this binary's
/// other tests run servers of their own. It is built on a runtime that lives as long as the
/// process, so that the cache's background tasks outlive each test's runtime.
static APP: LazyLock<axum::Router> = LazyLock::new(|| {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let app = runtime.block_on(build_app());
        std::mem::forget(runtime);
        app
    })
    .join()
    .unwrap()
});

async fn build_app() -> axum::Router {
    let overrides = Overrides {
        server: ServerFlags {
            max_body_bytes: Some(1000),
            ..ServerFlags::default()
        },
        ..Overrides::default()
    };
    let config = Config::load(None, overrides).unwrap();
    let cache = Arc::new(start_cache(&config).await.expect("ONNX Runtime"));
    let ready = Arc::new(Readiness::not_ready("starting"));
    ready.set_ready();
    router(Arc::new(app_state(&config, cache, ready)))
}

async fn app() -> axum::Router {
    APP.clone()
}

/// Sends one request and returns the status and the `error` object.
async fn error_of(
    app: &axum::Router,
    method: &str,
    path: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> (u16, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, content_type)
        .body(body.into())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let json: Value = serde_json::from_slice(&bytes).expect("a JSON body");
    let error = json["error"].clone();
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "no `{key}` in {json}");
    }
    assert!(!error["message"].as_str().unwrap().is_empty());
    (status, error)
}

const JSON: &str = "application/json";

#[tokio::test]
async fn bad_requests_get_openai_envelopes() {
    let app = app().await;
    // (body, status, code, param, words in the message)
    let cases: [(&str, u16, &str, Option<&str>, &str); 9] = [
        (r#"{"model": "#, 400, "invalid_json", None, "not valid JSON"),
        (
            r#"{"model":"m","input":"x"} extra"#,
            400,
            "invalid_json",
            None,
            "trailing",
        ),
        (
            r#"{"input":"x"}"#,
            400,
            "invalid_request",
            Some("model"),
            "missing field `model`",
        ),
        (
            r#"{"model":"m","input":"x","truncate":"yes"}"#,
            400,
            "invalid_request",
            Some("truncate"),
            "truncate: invalid type",
        ),
        (
            r#"{"model":"m","input":[1,"x"]}"#,
            400,
            "invalid_request",
            Some("input"),
            "input[1]",
        ),
        (
            r#"{"model":"m","input":"x","dimensions":-1}"#,
            400,
            "invalid_request",
            Some("dimensions"),
            "dimensions",
        ),
        (
            r#"{"model":"no/such-model","input":"x"}"#,
            404,
            "model_not_found",
            Some("model"),
            "no/such-model",
        ),
        (
            r#"{"model":"m","input":"x","encoding_format":1}"#,
            400,
            "invalid_request",
            Some("encoding_format"),
            "encoding_format: invalid type",
        ),
        (
            r#"{"model":"org/name@../../../../etc/hostname","input":"x"}"#,
            404,
            "model_not_found",
            Some("model"),
            "does not exist",
        ),
    ];
    for (body, status, code, param, words) in cases {
        let (got, error) = error_of(&app, "POST", "/v1/embeddings", JSON, body).await;
        assert_eq!(
            (got, error["code"].as_str()),
            (status, Some(code)),
            "{body}: {error}"
        );
        assert_eq!(error["param"].as_str(), param, "{body}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
    }
}

#[tokio::test]
async fn wrong_routes_types_and_sizes() {
    let app = app().await;
    let (status, error) = error_of(&app, "POST", "/v1/embeddings", "text/plain", "x").await;
    assert_eq!(
        (status, error["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let big = format!(r#"{{"model":"m","input":"{}"}}"#, "word ".repeat(400));
    let (status, error) = error_of(&app, "POST", "/v1/embeddings", JSON, big).await;
    assert_eq!(
        (status, error["code"].as_str()),
        (413, Some("request_too_large"))
    );
    assert!(
        error["message"].as_str().unwrap().contains("1000"),
        "{error}"
    );
    let (status, error) = error_of(&app, "GET", "/v1/nothing-here", JSON, "").await;
    assert_eq!((status, error["code"].as_str()), (404, Some("not_found")));
    let (status, error) = error_of(&app, "GET", "/v1/embeddings", JSON, "").await;
    assert_eq!(
        (status, error["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, error) = error_of(
        &app,
        "POST",
        "/v1/embeddings",
        JSON,
        r#"{"model":"m","input":[]}"#,
    )
    .await;
    assert_eq!((status, error["param"].as_str()), (400, Some("input")));
}
