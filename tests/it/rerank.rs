//! Every cross-encoder in ../shared/models (each `rerank*/NAME/reference.json`, found on its
//! own) reproduces the scores of sentence-transformers' `CrossEncoder.predict` through every
//! rerank shape: Cohere/Jina `documents` (scores and order), TEI `texts` (scores, raw logits,
//! texts), one pair per request and all pairs of a query in one request.

use crate::common;

use std::collections::BTreeMap;

use common::{Server, assert_error, models_root, models_root_arg, sorted_dirs};
use serde::Deserialize;
use serde_json::{Value, json};

/// The bar for scores.
const MAX_SCORE_ERROR: f64 = 1e-5;
/// Logits are scores before a sigmoid, whose slope is at most 1/4: 4e-5 keeps the same bar.
const MAX_LOGIT_ERROR: f64 = 4e-5;

#[derive(Deserialize)]
struct RerankReference {
    cases: Vec<RerankCase>,
}

#[derive(Deserialize, Clone)]
struct RerankCase {
    query: String,
    document: String,
    score: f64,
    logit: f64,
}

/// `GROUP/NAME` of every cross-encoder fixture.
fn rerankers() -> Vec<String> {
    let mut found = Vec::new();
    for group in sorted_dirs(&models_root()) {
        let group_name = group.file_name().unwrap().to_string_lossy().to_string();
        if !group_name.starts_with("rerank") {
            continue;
        }
        for dir in sorted_dirs(&group) {
            if dir.join("reference.json").is_file() {
                found.push(format!(
                    "{group_name}/{}",
                    dir.file_name().unwrap().to_string_lossy()
                ));
            }
        }
    }
    assert!(
        found.len() >= 4,
        "cross-encoder fixtures missing: {found:?}"
    );
    found
}

fn reference(id: &str) -> RerankReference {
    let text = std::fs::read_to_string(models_root().join(id).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The cases grouped by query, in file order.
fn by_query(cases: &[RerankCase]) -> Vec<(String, Vec<RerankCase>)> {
    let mut groups: Vec<(String, Vec<RerankCase>)> = Vec::new();
    for case in cases {
        match groups.iter_mut().find(|(q, _)| *q == case.query) {
            Some((_, group)) => group.push(case.clone()),
            None => groups.push((case.query.clone(), vec![case.clone()])),
        }
    }
    groups
}

fn server() -> Server {
    Server::start(&["--models-dir", &models_root_arg()])
}

fn assert_close(got: f64, want: f64, bar: f64, what: &str) {
    assert!(
        (got - want).abs() <= bar,
        "{what}: got {got}, want {want} (off by {:e})",
        (got - want).abs()
    );
}

#[test]
fn every_cross_encoder_matches_sentence_transformers_in_every_shape() {
    let server = server();
    let mut failures = Vec::new();
    for id in rerankers() {
        let reference = reference(&id);
        for (query, cases) in by_query(&reference.cases) {
            let documents: Vec<&str> = cases.iter().map(|c| c.document.as_str()).collect();

            // Cohere / Jina: results best first, each with its document.
            let (status, json) = server.post_json(
                "/v1/rerank",
                &json!({"model": id, "query": query, "documents": documents, "return_documents": true}),
            );
            assert_eq!(status, 200, "{id}: {json}");
            let results = json["results"].as_array().unwrap();
            assert_eq!(results.len(), cases.len(), "{id}");
            let scores: Vec<f64> = results
                .iter()
                .map(|r| r["relevance_score"].as_f64().unwrap())
                .collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{id}: {scores:?}");
            for result in results {
                let index = result["index"].as_u64().unwrap() as usize;
                let case = &cases[index];
                assert_eq!(result["document"]["text"], case.document.as_str());
                let score = result["relevance_score"].as_f64().unwrap();
                if (score - case.score).abs() > MAX_SCORE_ERROR {
                    failures.push(format!(
                        "{id} {:?}/{:?}: {score} vs {}",
                        case.query, case.document, case.score
                    ));
                }
            }
            assert!(json["usage"]["total_tokens"].as_u64().unwrap() > 0);

            // TEI: raw logits and texts.
            let (status, ranks) = server.post_json(
                "/rerank",
                &json!({"model": id, "query": query, "texts": documents, "raw_scores": true, "return_text": true}),
            );
            assert_eq!(status, 200, "{id}: {ranks}");
            for rank in ranks.as_array().unwrap() {
                let case = &cases[rank["index"].as_u64().unwrap() as usize];
                assert_eq!(rank["text"], case.document.as_str());
                assert_close(
                    rank["score"].as_f64().unwrap(),
                    case.logit,
                    MAX_LOGIT_ERROR,
                    &format!("{id} logit of {:?}", case.document),
                );
            }
        }
        // One pair per request: the same scores without batch-mates.
        for case in &reference.cases {
            let (status, ranks) = server.post_json(
                "/rerank",
                &json!({"model": id, "query": case.query, "texts": [case.document]}),
            );
            assert_eq!(status, 200, "{ranks}");
            assert_close(
                ranks[0]["score"].as_f64().unwrap(),
                case.score,
                MAX_SCORE_ERROR,
                &format!("{id} alone {:?}", case.document),
            );
            assert!(ranks[0].get("text").is_none());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cohere_and_jina_options() {
    let server = server();
    let model = "rerank/bert-cross-encoder";
    let cases = reference(model).cases;
    let (query, cases) = by_query(&cases).remove(0);
    let documents: Vec<Value> = cases
        .iter()
        .map(|c| json!({"text": c.document, "title": "Jina and Cohere objects carry more fields"}))
        .collect();
    let (status, json) = server.post_json(
        "/v2/rerank",
        &json!({"model": model, "query": query, "documents": documents, "top_n": 2}),
    );
    assert_eq!(status, 200, "{json}");
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let best = cases
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.score.total_cmp(&b.1.score))
        .unwrap()
        .0;
    assert_eq!(results[0]["index"], best);
    assert!(
        results[0].get("document").is_none(),
        "documents only when asked"
    );
    assert_eq!(json["model"], model);
    assert!(!json["id"].as_str().unwrap().is_empty());

    // Cohere's max_tokens_per_doc cuts each document to its first tokens before pairing:
    // it scores as the text those tokens cover (TEI's /tokenize tells where they end).
    let long = "Caching keeps a loaded model in memory so later requests skip loading it.";
    let (status, tokens) = server.post_json(
        "/tokenize",
        &json!({"model": model, "inputs": long, "add_special_tokens": false}),
    );
    assert_eq!(status, 200, "{tokens}");
    let end = tokens[0][3]["stop"].as_u64().unwrap() as usize;
    let (_, cut) = server.post_json(
        "/v1/rerank",
        &json!({"model": model, "query": query, "documents": [long], "max_tokens_per_doc": 4}),
    );
    let (_, prefix) = server.post_json(
        "/v1/rerank",
        &json!({"model": model, "query": query, "documents": [&long[..end]]}),
    );
    assert_eq!(
        cut["results"][0]["relevance_score"], prefix["results"][0]["relevance_score"],
        "{cut} {prefix}"
    );
    assert_ne!(
        cut["usage"]["total_tokens"],
        server
            .post_json(
                "/v1/rerank",
                &json!({"model": model, "query": query, "documents": [long]}),
            )
            .1["usage"]["total_tokens"]
    );
}

#[test]
fn requests_of_the_wrong_kind_or_shape_get_clear_errors() {
    let server = server();
    let embedder = "sentence-transformers/all-MiniLM-L6-v2";
    let reranker = "rerank/xlmr-reranker";

    let (status, json) = server.post_json(
        "/v1/rerank",
        &json!({"model": embedder, "query": "q", "documents": ["d"]}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(message.contains("not a reranker"), "{message}");
    assert_eq!(json["error"]["param"], "model");

    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": reranker, "input": "text"}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(message.contains("/v1/rerank"), "{message}");

    for (body, param) in [
        (
            json!({"model": reranker, "query": "q", "documents": []}),
            "documents",
        ),
        (json!({"model": reranker, "query": "q"}), "documents"),
        (
            json!({"model": reranker, "query": "q", "documents": ["d"], "top_n": 0}),
            "top_n",
        ),
        (
            json!({"model": reranker, "query": "q", "documents": [{"title": "t"}]}),
            "documents",
        ),
        (json!({"model": reranker, "documents": ["d"]}), "query"),
    ] {
        let (status, json) = server.post_json("/v1/rerank", &body);
        assert_error(status, &json, 400, None);
        assert_eq!(json["error"]["param"], param, "{body} {json}");
    }

    // A TEI-shaped request gets TEI's error shape.
    let (status, json) = server.post_json(
        "/rerank",
        &json!({"model": embedder, "query": "q", "texts": ["d"]}),
    );
    assert_eq!(status, 400);
    assert_eq!(json["error_type"], "validation", "{json}");
    assert!(json["error"].as_str().unwrap().contains("not a reranker"));
    let (status, json) = server.post_json(
        "/rerank",
        &json!({"model": reranker, "query": "q", "texts": []}),
    );
    assert_eq!(
        (status, json["error_type"].as_str()),
        (400, Some("empty")),
        "{json}"
    );

    // Too many documents are refused while the body is read.
    let (status, json) = server.post_json(
        "/v1/rerank",
        &json!({"model": reranker, "query": "q", "documents": vec![""; 2049]}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(message.contains("more than 2048 documents"), "{message}");

    // A megabyte-long document costs what the model reads of it, and scores as its start.
    let huge = "word ".repeat(200_000);
    let (status, json) = server.post_json(
        "/rerank",
        &json!({"model": reranker, "query": "q", "texts": [huge, "word ".repeat(100)]}),
    );
    assert_eq!(status, 200, "{json}");
    assert_eq!(json[0]["score"], json[1]["score"], "{json}");

    // Truncation off: an over-long pair is refused, not cut.
    let long = "word ".repeat(200);
    let (status, json) = server.post_json(
        "/rerank",
        &json!({"model": reranker, "query": "q", "texts": [long], "truncate": false}),
    );
    assert_eq!(status, 400, "{json}");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("truncation is off")
    );
}

#[test]
fn models_say_which_task_they_serve_and_rerank_metrics_carry_the_model() {
    let server = server();
    let (status, json) = server.get("/v1/models");
    assert_eq!(status, 200);
    let tasks: BTreeMap<String, String> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_string(),
                m["task"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    for id in rerankers() {
        assert_eq!(tasks[&id], "rerank", "{id}");
    }
    assert_eq!(tasks["sentence-transformers/all-MiniLM-L6-v2"], "embedding");
    assert_eq!(tasks["zoo/bert-labse"], "embedding");

    let model = "rerank-legacy/bert-cross-encoder";
    let (status, _) = server.post_json(
        "/v1/rerank",
        &json!({"model": model, "query": "q", "documents": ["a", "b", "c"]}),
    );
    assert_eq!(status, 200);
    let labels = [("route", "/v1/rerank"), ("model", model), ("status", "200")];
    assert_eq!(server.metric("embedserve_requests_total", &labels), 1.0);
    let (_, json) = server.get(&format!("/v1/models/{model}"));
    assert_eq!(json["task"], "rerank");
    assert_eq!(json["loaded"], true);
}

#[test]
fn pairs_of_concurrent_requests_share_runs_and_keep_their_scores() {
    let server = std::sync::Arc::new(server());
    let model = "rerank/bert-cross-encoder";
    let runs = |server: &Server| server.metric("embedserve_batch_size_count", &[("model", model)]);
    let shared_runs = |server: &Server| {
        server.metric("embedserve_batch_requests_count", &[("model", model)])
            - server.metric(
                "embedserve_batch_requests_bucket",
                &[("model", model), ("le", "1")],
            )
    };
    let cases = reference(model).cases;
    let alone: Vec<f64> = cases
        .iter()
        .map(|case| {
            let (_, ranks) = server.post_json(
                "/rerank",
                &json!({"model": model, "query": case.query, "texts": [case.document]}),
            );
            ranks[0]["score"].as_f64().unwrap()
        })
        .collect();
    assert_eq!(shared_runs(&server), 0.0, "one request at a time");

    // A request of many long pairs keeps the model busy while the others arrive.
    let before = runs(&server);
    let busy = {
        let server = server.clone();
        std::thread::spawn(move || {
            let documents = vec!["A long document. ".repeat(40); 2048];
            let (status, _) = server.post_json(
                "/v1/rerank",
                &json!({"model": model, "query": "q", "documents": documents}),
            );
            assert_eq!(status, 200);
        })
    };
    server.wait_for_metric(
        "embedserve_batch_size_count",
        &[("model", model)],
        before + 1.0,
    );
    let start = std::sync::Arc::new(std::sync::Barrier::new(cases.len()));
    let clients: Vec<_> = cases
        .iter()
        .map(|case| {
            let (server, start, case) = (server.clone(), start.clone(), case.clone());
            std::thread::spawn(move || {
                start.wait();
                let (_, ranks) = server.post_json(
                    "/rerank",
                    &json!({"model": model, "query": case.query, "texts": [case.document]}),
                );
                ranks[0]["score"].as_f64().unwrap()
            })
        })
        .collect();
    for (client, want) in clients.into_iter().zip(alone) {
        let got = client.join().unwrap();
        assert!(
            (got - want).abs() <= 1e-6,
            "batch-mates moved a score: {got} vs {want}"
        );
    }
    busy.join().unwrap();
    assert!(
        shared_runs(&server) > 0.0,
        "no run held pairs of several requests"
    );
}
