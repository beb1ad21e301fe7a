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
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A stand-in for the Hub serving one repository: tiny/bert-mean plus files that a
/// sentence-transformers ONNX model does not need, which must never be fetched.
pub struct FakeHub {
    files: BTreeMap<String, Vec<u8>>,
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
    if format!("{org}/{name}") != REPO {
        return StatusCode::NOT_FOUND.into_response();
    }
    let siblings: Vec<_> = hub.files.keys().map(|f| json!({"rfilename": f})).collect();
    axum::Json(json!({"sha": COMMIT, "siblings": siblings})).into_response()
}

async fn resolve(
    State(hub): State<Arc<FakeHub>>,
    UrlPath((org, name, _rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(bytes) = hub
        .files
        .get(&file)
        .filter(|_| format!("{org}/{name}") == REPO)
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
    let mut files = BTreeMap::new();
    collect(&model_dir("tiny/bert-mean"), "", &mut files);
    files.insert("pytorch_model.bin".into(), b"not needed".to_vec());
    files.insert("onnx/model_qint8.onnx".into(), b"not needed".to_vec());
    let hub = Arc::new(FakeHub {
        files,
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
