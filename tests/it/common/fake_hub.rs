//! A stand-in for the Hugging Face Hub's file routes, served from a local folder, for the
//! download tests (HF_ENDPOINT points at it).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::Semaphore;

use super::model_dir;

pub const REPO: &str = "fixture-org/bert-mean";
/// A model with a Dense module (zoo-st5/bert-labse).
pub const DENSE_REPO: &str = "fixture-org/labse";
/// A static embedding model (zoo/static-embedding).
pub const STATIC_REPO: &str = "fixture-org/static";
/// optimum's export: one root-level `model.onnx`, no modules.json.
pub const ROOT_GRAPH_REPO: &str = "fixture-org/optimum";
/// A cross-encoder as older Hub repos hold one: config.json names the architecture, no
/// sentence-transformers files (rerank-legacy/xlmr-reranker).
pub const RERANK_REPO: &str = "fixture-org/reranker";
/// The kinds beyond embedders (../shared/kinds): a Router model, inference-free SPLADE (a
/// Router with a static sparse query route) and a text classifier.
pub const ROUTER_REPO: &str = "fixture-org/router";
pub const SPLADE_FREE_REPO: &str = "fixture-org/splade-inference-free";
pub const CLASSIFIER_REPO: &str = "fixture-org/classifier";
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Files no model here needs, which must never be fetched.
pub const DECOYS: [&str; 4] = [
    "pytorch_model.bin",
    "model.safetensors",
    "onnx/model_qint8.onnx",
    "2_Dense/pytorch_model.bin",
];

/// A stand-in for the Hub serving eight repositories, each a fixture folder plus files that
/// its model does not need (`DECOYS`).
pub struct FakeHub {
    /// Repository, then file, to bytes.
    repos: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    pub fetched: Mutex<Vec<String>>,
    /// While closed, downloads of the ONNX graph wait: lets a test hold a load in progress.
    pub gate: Semaphore,
}

fn collect(dir: &Path, prefix: &str, files: &mut BTreeMap<String, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if entry.path().is_dir() {
            collect(&entry.path(), &format!("{name}/"), files);
        } else if name != "reference.json" {
            files.insert(name, std::fs::read(entry.path()).unwrap());
        }
    }
}

async fn repo_info(
    State(hub): State<Arc<FakeHub>>,
    UrlPath((org, name, _rev)): UrlPath<(String, String, String)>,
) -> Response {
    let Some(files) = hub.repos.get(&format!("{org}/{name}")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let siblings: Vec<_> = files.keys().map(|f| json!({"rfilename": f})).collect();
    axum::Json(json!({"sha": COMMIT, "siblings": siblings})).into_response()
}

async fn resolve(
    State(hub): State<Arc<FakeHub>>,
    UrlPath((org, name, _rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(bytes) = hub
        .repos
        .get(&format!("{org}/{name}"))
        .and_then(|files| files.get(&file))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if file.ends_with(".onnx") {
        let _pass = hub.gate.acquire().await;
    }
    hub.fetched.lock().unwrap().push(file.clone());
    let etag = format!("\"{:016x}\"", fnv1a(bytes));
    let len = bytes.len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|r| {
            r.to_str()
                .ok()?
                .strip_prefix("bytes=")?
                .split_once('-')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .and_then(|(a, b)| {
            Some((
                a.parse::<usize>().ok()?,
                b.parse::<usize>().ok()?.min(len - 1),
            ))
        })
        .unwrap_or((0, len - 1));
    (
        StatusCode::PARTIAL_CONTENT,
        [
            ("x-repo-commit", COMMIT.to_string()),
            ("etag", etag),
            ("content-range", format!("bytes {start}-{end}/{len}")),
        ],
        bytes[start..=end].to_vec(),
    )
        .into_response()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

/// Starts the fake Hub on a free port in a thread of its own; returns its URL.
pub fn start_fake_hub() -> (String, Arc<FakeHub>) {
    start_gated_hub(true)
}

/// Like `start_fake_hub`; with `open = false`, the graph is served once `gate` gets a permit.
pub fn start_gated_hub(open: bool) -> (String, Arc<FakeHub>) {
    let mut repos = BTreeMap::new();
    let kinds = model_dir("../kinds");
    for (repo, fixture) in [
        (REPO, model_dir("tiny/bert-mean")),
        (DENSE_REPO, model_dir("zoo-st5/bert-labse")),
        (STATIC_REPO, model_dir("zoo/static-embedding")),
        (ROOT_GRAPH_REPO, model_dir("zoo-st5/bert-dense-optimum-st")),
        (RERANK_REPO, model_dir("rerank-legacy/xlmr-reranker")),
        (ROUTER_REPO, kinds.join("router-query-document")),
        (SPLADE_FREE_REPO, kinds.join("splade-inference-free")),
        (CLASSIFIER_REPO, kinds.join("text-classifier-4labels")),
    ] {
        let mut files = BTreeMap::new();
        collect(&fixture, "", &mut files);
        for decoy in DECOYS {
            files.insert(decoy.to_string(), b"not needed".to_vec());
        }
        repos.insert(repo.to_string(), files);
    }
    let hub = Arc::new(FakeHub {
        repos,
        fetched: Mutex::new(Vec::new()),
        gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
    });
    let app = Router::new()
        .route("/api/models/{org}/{name}/revision/{rev}", get(repo_info))
        .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
        .with_state(hub.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (url, hub)
}
