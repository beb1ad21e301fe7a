//! Models by Hub id, downloaded for real with hf-hub from a local server that answers like
//! the Hub's file routes (HF_ENDPOINT), then served from the Hugging Face cache.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;

use common::fake_hub::{
    CLASSIFIER_REPO, DECOYS, DENSE_REPO, FakeHub, REPO, RERANK_REPO, ROOT_GRAPH_REPO, ROUTER_REPO,
    SPLADE_FREE_REPO, STATIC_REPO, start_fake_hub,
};
use common::{Server, cosine, reference, run_cli};
use serde_json::json;

fn assert_matches_reference(server: &Server, model: &str) {
    assert_matches(server, model, "tiny/bert-mean");
}

fn assert_matches(server: &Server, model: &str, fixture: &str) {
    let reference = reference(fixture);
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
        !fetched.iter().any(|f| DECOYS.contains(&f.as_str())),
        "{fetched:?}"
    );
}

/// A fresh fake Hub and an empty Hugging Face cache, then `embedserve serve ARGS` using both.
fn serve_from_fake_hub(args: &[&str]) -> (Server, Arc<FakeHub>, tempfile::TempDir) {
    let (endpoint, hub) = start_fake_hub();
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_with_env(
        args,
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    (server, hub, home)
}

#[test]
fn a_root_level_graph_is_found_without_onnx_file() {
    let (server, hub, _home) = serve_from_fake_hub(&["--model", ROOT_GRAPH_REPO]);
    assert_matches(&server, ROOT_GRAPH_REPO, "zoo-st5/bert-dense-optimum-st");
    let fetched = hub.fetched.lock().unwrap().clone();
    assert!(fetched.iter().any(|f| f == "model.onnx"), "{fetched:?}");
    assert!(
        !fetched.iter().any(|f| DECOYS.contains(&f.as_str())),
        "{fetched:?}"
    );
}

#[test]
fn dense_and_static_models_download_what_their_modules_need() {
    let (server, hub, _home) =
        serve_from_fake_hub(&["--model", DENSE_REPO, "--model", STATIC_REPO]);
    assert_matches(&server, DENSE_REPO, "zoo-st5/bert-labse");
    assert_matches(&server, STATIC_REPO, "zoo/static-embedding");
    let fetched = hub.fetched.lock().unwrap().clone();
    for needed in [
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "0_StaticEmbedding/model.safetensors",
        "0_StaticEmbedding/tokenizer.json",
    ] {
        assert!(fetched.iter().any(|f| f == needed), "{needed}: {fetched:?}");
    }
    assert!(
        !fetched.iter().any(|f| DECOYS.contains(&f.as_str())),
        "{fetched:?}"
    );
    // Only the Dense model has a graph (hf-hub asks twice for each file).
    let mut graphs: Vec<_> = fetched.iter().filter(|f| f.ends_with(".onnx")).collect();
    graphs.dedup();
    assert_eq!(graphs, ["onnx/model.onnx"], "{fetched:?}");
}

#[test]
fn serve_downloads_a_hub_model_then_embeds_with_it() {
    let (server, hub, _home) = serve_from_fake_hub(&["--model", REPO]);
    assert_matches_reference(&server, REPO);
    assert_fetched_only_needed(&hub);
}

/// A cross-encoder from the Hub: downloaded with its config (which makes it a reranker),
/// scored as sentence-transformers scores it, and listed with its task once in the cache.
#[test]
fn a_hub_cross_encoder_downloads_and_reranks() {
    let (server, hub, _home) = serve_from_fake_hub(&["--model", RERANK_REPO]);
    let text = std::fs::read_to_string(
        common::model_dir("rerank-legacy/xlmr-reranker").join("reference.json"),
    )
    .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let (status, json) = server.post_json(
            "/v1/rerank",
            &json!({"model": RERANK_REPO, "query": case["query"], "documents": [case["document"]]}),
        );
        assert_eq!(status, 200, "{json}");
        let score = json["results"][0]["relevance_score"].as_f64().unwrap();
        assert!(
            (score - case["score"].as_f64().unwrap()).abs() <= 1e-5,
            "{case}"
        );
    }
    let fetched = hub.fetched.lock().unwrap().clone();
    assert!(fetched.iter().any(|f| f == "config.json"), "{fetched:?}");
    assert!(
        !fetched.iter().any(|f| DECOYS.contains(&f.as_str())),
        "{fetched:?}"
    );
    let (_, model) = server.get(&format!("/v1/models/{RERANK_REPO}"));
    assert_eq!(model["task"], "rerank", "{model}");
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

#[test]
fn a_graph_the_repository_lacks_is_named_with_the_ones_it_has() {
    let (endpoint, _hub) = start_fake_hub();
    let home = tempfile::tempdir().unwrap();
    let output = run_cli(
        &["pull", DENSE_REPO, "--onnx-file", "onnx/model_O3.onnx"],
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("has no onnx/model_O3.onnx (the ONNX graph)"),
        "{stderr}"
    );
    assert!(stderr.contains("onnx/model.onnx"), "{stderr}");
}

/// A Router model, inference-free SPLADE (a Router whose query route is a static table) and
/// a transformers classifier download each route's files and serve what the library gives.
#[test]
fn router_sparse_and_classifier_repositories_download_what_their_routes_need() {
    let (server, hub, _home) = serve_from_fake_hub(&[
        "--model",
        ROUTER_REPO,
        "--model",
        SPLADE_FREE_REPO,
        "--model",
        CLASSIFIER_REPO,
    ]);
    let kinds = common::model_dir("../kinds");
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(kinds.join(name).join("reference.json")).unwrap(),
        )
        .unwrap()
    };
    let router = read("router-query-document");
    for case in router["cases"].as_array().unwrap().iter().take(6) {
        let extra = case["task"]
            .as_str()
            .map_or(json!({}), |t| json!({"input_type": t}));
        let got = server.embed(ROUTER_REPO, case["input"].clone(), extra);
        let want: Vec<f32> = case["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert!(cosine(&got[0], &want) >= 0.99999, "{}", case["input"]);
    }
    let sparse = read("splade-inference-free");
    for case in sparse["cases"].as_array().unwrap().iter().take(6) {
        let mut body = json!({"model": SPLADE_FREE_REPO, "inputs": case["input"]});
        if let Some(task) = case["task"].as_str() {
            body["input_type"] = json!(task);
        }
        let (status, got) = server.post_json("/embed_sparse", &body);
        assert_eq!(status, 200, "{got}");
        let indices: Vec<u64> = got[0]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["index"].as_u64().unwrap())
            .collect();
        let want: Vec<u64> = case["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap())
            .collect();
        assert_eq!(indices, want, "{} ({})", case["input"], case["task"]);
    }
    let classifier = read("text-classifier-4labels");
    let case = &classifier["cases"][1];
    let (status, got) = server.post_json(
        "/predict",
        &json!({"model": CLASSIFIER_REPO, "inputs": case["input"]}),
    );
    assert_eq!(status, 200, "{got}");
    assert_eq!(got[0]["label"], case["label"]);

    let fetched = hub.fetched.lock().unwrap().clone();
    for needed in [
        "router_config.json",
        "query_0_Transformer/onnx/model.onnx",
        "query_0_Transformer/tokenizer.json",
        "query_0_Transformer/sentence_bert_config.json",
        "query_1_Pooling/config.json",
        "document_0_Transformer/onnx/model.onnx",
        "document_1_Pooling/config.json",
        "query_0_SparseStaticEmbedding/model.safetensors",
        "query_0_SparseStaticEmbedding/tokenizer_config.json",
        "document_0_MLMTransformer/onnx/model.onnx",
        "document_1_SpladePooling/config.json",
    ] {
        assert!(fetched.iter().any(|f| f == needed), "{needed}: {fetched:?}");
    }
    assert!(
        !fetched.iter().any(|f| DECOYS.contains(&f.as_str())),
        "{fetched:?}"
    );
}
