//! The API's behaviour that needs no model, answered by the router in process (no server, no
//! socket), as axum's own examples test: OpenAI's error envelopes with the right status,
//! `code` and `param`; API keys; TEI's error shape on TEI's routes; and the OpenAPI document,
//! whose every route must be served.

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, header};
use embedserve::api::{AppState, Readiness, router};
use embedserve::batch::Batches;
use embedserve::cache::ModelCache;
use embedserve::config::{Config, Overrides, ServerFlags};
use embedserve::server::{app_state, start_cache};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The model cache the routers share: ONNX Runtime allows one environment per process, and
/// this binary's other tests run servers of their own. It is built on a runtime that lives
/// as long as the process, so that its background tasks outlive each test's runtime. No
/// model is configured, and none is loaded.
static CACHE: LazyLock<Arc<ModelCache>> = LazyLock::new(|| {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let cache = runtime.block_on(start_cache(&config(ServerFlags::default())));
        std::mem::forget(runtime);
        Arc::new(cache.expect("ONNX Runtime"))
    })
    .join()
    .unwrap()
});

/// The data directory the routers share.
static DATA: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());

fn config(server: ServerFlags) -> Config {
    let overrides = Overrides {
        server,
        ..Overrides::default()
    };
    Config::load(None, overrides).unwrap()
}

/// The router of a ready server with these flags, its Batch API on a data directory of its
/// own.
fn app_with(server: ServerFlags) -> axum::Router {
    let ready = Arc::new(Readiness::not_ready("starting"));
    ready.set_ready();
    let config = config(server);
    let batches = Batches::open(
        DATA.path(),
        config.batches.clone(),
        config.server.max_body_bytes,
        None,
    );
    let state = AppState {
        batches: Some(batches.unwrap()),
        ..app_state(&config, CACHE.clone(), ready)
    };
    router(Arc::new(state))
}

/// The router of a ready server with a 1000-byte body limit.
fn app() -> axum::Router {
    app_with(ServerFlags {
        max_body_bytes: Some(1000),
        ..ServerFlags::default()
    })
}

/// Sends one request with `headers` and returns the status and the body, as JSON.
async fn send(
    app: &axum::Router,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> (u16, Value) {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let json = if bytes.is_empty() || !bytes.starts_with(b"{") && !bytes.starts_with(b"[") {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON body")
    };
    (status, json)
}

/// Sends one request and returns the status and the `error` object.
async fn error_of(
    app: &axum::Router,
    method: &str,
    path: &str,
    content_type: &str,
    body: impl Into<Body>,
) -> (u16, Value) {
    let (status, json) = send(
        app,
        method,
        path,
        &[(header::CONTENT_TYPE.as_str(), content_type)],
        body,
    )
    .await;
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
    let app = app();
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
    let app = app();
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

#[tokio::test]
async fn api_keys_guard_the_api_but_not_health_readiness_or_metrics() {
    let app = app_with(ServerFlags {
        api_keys: vec!["sk-one".into(), "sk-two".into()],
        ..ServerFlags::default()
    });
    let body = || json!({"model": "no/such-model", "input": "x"}).to_string();
    let post = |key: Option<&'static str>| {
        let app = app.clone();
        let body = body();
        async move {
            let bearer = key.map(|key| format!("Bearer {key}"));
            let mut headers = vec![("content-type", JSON)];
            if let Some(bearer) = &bearer {
                headers.push(("authorization", bearer.as_str()));
            }
            send(&app, "POST", "/v1/embeddings", &headers, body).await
        }
    };
    let (status, json) = post(None).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Bearer")
    );
    assert_eq!(post(Some("sk-wrong")).await.0, 401);
    // Past the key check, the request gets as far as the model it names.
    let (status, json) = post(Some("sk-two")).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (404, Some("model_not_found"))
    );
    let (status, json) = send(&app, "GET", "/v1/models", &[], "").await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    for open in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(send(&app, "GET", open, &[], "").await.0, 200, "{open}");
    }
}

#[tokio::test]
async fn tei_routes_answer_auth_and_parse_errors_in_tei_shape() {
    let app = app_with(ServerFlags {
        api_keys: vec!["k1".into()],
        ..ServerFlags::default()
    });
    let json_body = [("content-type", JSON)];
    for path in ["/embed", "/", "/similarity", "/tokenize"] {
        let (status, json) = send(&app, "POST", path, &json_body, r#"{"inputs": "a"}"#).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(json["error_type"], "validation", "{path}: {json}");
    }
    let (status, json) = send(&app, "GET", "/info", &[], "").await;
    assert_eq!((status, &json["error_type"]), (401, &json!("validation")));
    let (status, json) = send(&app, "POST", "/v1/rerank", &json_body, r#"{"query": "q"}"#).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let open = app_with(ServerFlags::default());
    let (status, json) = send(&open, "POST", "/embed", &json_body, "{").await;
    assert_eq!(status, 400);
    assert_eq!(json["error_type"], "validation", "{json}");
}

/// Every route the document names is served at that path, with that method, and the routes
/// clients rely on are all there.
#[tokio::test]
async fn openapi_describes_every_route_and_every_route_it_describes_is_served() {
    let app = app_with(ServerFlags::default());
    let (status, document) = send(&app, "GET", "/openapi.json", &[], "").await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/embeddings", "post"),
        ("/embeddings", "post"),
        ("/v1/rerank", "post"),
        ("/v2/rerank", "post"),
        ("/rerank", "post"),
        ("/embed", "post"),
        ("/", "post"),
        ("/similarity", "post"),
        ("/tokenize", "post"),
        ("/info", "get"),
        ("/v1/models", "get"),
        ("/models", "get"),
        ("/v1/models/{id}", "get"),
        ("/models/{id}", "get"),
        ("/admin/models/{id}/load", "post"),
        ("/admin/models/{id}", "delete"),
        ("/health", "get"),
        ("/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{path} {method}"
        );
    }
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            // A model id holds a slash; an unknown one is the handler's 404, in its words.
            let concrete = path.replace("{id}", "no-org/no-model");
            let (status, json) = send(
                &app,
                &method.to_uppercase(),
                &concrete,
                &[("content-type", JSON)],
                "{}",
            )
            .await;
            let code = json["error"]["code"].as_str();
            assert!(
                !matches!(code, Some("not_found" | "method_not_allowed")) && status != 405,
                "{method} {path} is documented but not served: {status} {json}"
            );
        }
    }
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for schema in [
        "EmbeddingRequest",
        "RerankRequest",
        "RerankResponse",
        "EmbedRequest",
        "Info",
    ] {
        assert!(schemas.contains_key(schema), "{schema}");
    }
}
