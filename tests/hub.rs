//! Models by Hub id, downloaded for real with hf-hub from a local server that answers like
//! the Hub's file routes (HF_ENDPOINT), then served from the Hugging Face cache.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::{Server, cosine, model_dir, reference, run_cli};
use serde_json::json;

const REPO: &str = "fixture-org/bert-mean";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A stand-in for the Hub serving one repository: tiny/bert-mean plus files that a
/// sentence-transformers ONNX model does not need, which must never be fetched.
struct FakeHub {
    files: BTreeMap<String, Vec<u8>>,
    fetched: Mutex<Vec<String>>,
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
fn start_fake_hub() -> (String, Arc<FakeHub>) {
    let mut files = BTreeMap::new();
    collect(&model_dir("tiny/bert-mean"), "", &mut files);
    files.insert("pytorch_model.bin".into(), b"not needed".to_vec());
    files.insert("onnx/model_qint8.onnx".into(), b"not needed".to_vec());
    let hub = Arc::new(FakeHub {
        files,
        fetched: Mutex::new(Vec::new()),
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

fn assert_matches_reference(server: &Server, model: &str) {
    let reference = reference("tiny/bert-mean");
    let inputs: Vec<&str> = reference.cases.iter().map(|c| c.input.as_str()).collect();
    let got = server.embed(model, json!(inputs), json!({}));
    for (case, vector) in reference.cases.iter().zip(&got) {
        assert!(
            cosine(vector, &case.embedding) >= 0.99999,
            "{model}: {}",
            case.input
        );
    }
}

fn assert_fetched_only_needed(hub: &FakeHub) {
    let fetched = hub.fetched.lock().unwrap().clone();
    assert!(
        fetched.iter().any(|f| f == "onnx/model.onnx"),
        "{fetched:?}"
    );
    assert!(
        fetched.iter().any(|f| f == "1_Pooling/config.json"),
        "{fetched:?}"
    );
    assert!(
        !fetched
            .iter()
            .any(|f| f == "pytorch_model.bin" || f == "onnx/model_qint8.onnx"),
        "{fetched:?}"
    );
}

#[test]
fn serve_downloads_a_hub_model_then_embeds_with_it() {
    let (endpoint, hub) = start_fake_hub();
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        &["--model", REPO],
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    assert_matches_reference(&server, REPO);
    assert_fetched_only_needed(&hub);
}

#[test]
fn pull_fills_the_cache_and_serving_offline_reads_it() {
    let (endpoint, hub) = start_fake_hub();
    let home = tempfile::tempdir().unwrap();
    let home_str = home.path().to_str().unwrap();
    let output = run_cli(
        &["pull", REPO],
        &[("HF_ENDPOINT", &endpoint), ("HF_HOME", home_str)],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let snapshot = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
    assert!(snapshot.starts_with(home.path()), "{}", snapshot.display());
    assert!(snapshot.join("onnx/model.onnx").is_file());
    assert_fetched_only_needed(&hub);

    let fetched_by_pull = hub.fetched.lock().unwrap().len();
    let server = Server::start_with_env(
        &["--model", &format!("bert={REPO}")],
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", home_str),
            ("HF_HUB_OFFLINE", "1"),
        ],
    );
    assert_matches_reference(&server, "bert");
    assert_eq!(
        hub.fetched.lock().unwrap().len(),
        fetched_by_pull,
        "served from the cache"
    );
}

#[test]
fn offline_without_a_copy_fails_at_startup_and_says_why() {
    let home = tempfile::tempdir().unwrap();
    let log = Server::try_start(
        &["--model", "fixture-org/absent"],
        &[
            ("HF_HOME", home.path().to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
    )
    .err()
    .expect("must not start");
    assert!(
        log.contains("fixture-org/absent") && log.contains("HF_HUB_OFFLINE"),
        "{log}"
    );
}

#[test]
fn an_unknown_repository_fails_with_the_hub_answer() {
    let (endpoint, _hub) = start_fake_hub();
    let home = tempfile::tempdir().unwrap();
    let output = run_cli(
        &["pull", "fixture-org/absent"],
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("fixture-org/absent") && stderr.contains("404"),
        "{stderr}"
    );
}

#[test]
fn requests_cannot_download_unless_allowed() {
    let (endpoint, hub) = start_fake_hub();
    let home = tempfile::tempdir().unwrap();
    let envs = [
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HOME", home.path().to_str().unwrap()),
    ];
    let server = Server::start_with_env(&[], &envs);
    let (status, body) = server.post_json("/v1/embeddings", &json!({"model": REPO, "input": "x"}));
    common::assert_error(status, &body, 404, Some("model_not_found"));
    assert!(
        hub.fetched.lock().unwrap().is_empty(),
        "nothing was downloaded"
    );
    drop(server);

    let server = Server::start_with_env(&["--allow-hub-downloads"], &envs);
    assert_matches_reference(&server, REPO);
    assert_eq!(server.loaded(), [REPO], "listed once loaded");
}
