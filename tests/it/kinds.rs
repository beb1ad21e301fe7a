//! The model kinds beyond embedders in ../shared/kinds, through the server against what the
//! library computed (`reference.json`), alone and batched. Every folder whose reference holds
//! a classifier's logits is picked up (transformers' text classifiers, single- and
//! multi-label, and cross-encoders with several labels, through TEI's `/predict`), and every
//! sparse encoder without routes (SPLADE, through TEI's `/embed_sparse`), and every dense
//! Router model (a query route and a document route, chosen by `input_type`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::common::{self, Server, assert_error, cosine};

const LOGIT_TOLERANCE: f64 = 1e-4;
const PROBABILITY_TOLERANCE: f64 = 1e-5;

fn kinds_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/kinds")
}

/// The folders whose reference's cases hold `field` (a classifier's `logits`, a sparse
/// encoder's `indices`, a dense `embedding`), with their references: at least `at_least`.
fn references(field: &str, at_least: usize) -> Vec<(String, Value)> {
    let found: Vec<(String, Value)> = common::sorted_dirs(&kinds_root())
        .into_iter()
        .filter_map(|dir| {
            let text = std::fs::read_to_string(dir.join("reference.json")).ok()?;
            let reference: Value = serde_json::from_str(&text).unwrap();
            reference["cases"][0].get(field)?;
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            Some((name, reference))
        })
        .collect();
    assert!(
        found.len() >= at_least,
        "folders in ../shared/kinds with `{field}`: {found:?}"
    );
    found
}

fn classifiers() -> Vec<(String, Value)> {
    references("logits", 3)
}

fn sparse_encoders() -> Vec<(String, Value)> {
    references("indices", 2)
}

/// A server with these models, each named after its folder.
fn server(classifiers: &[(String, Value)]) -> Server {
    let specs: Vec<String> = classifiers
        .iter()
        .map(|(name, _)| format!("{name}={}", kinds_root().join(name).display()))
        .collect();
    let mut args = vec!["--max-loaded-models", "8"];
    for spec in &specs {
        args.extend(["--model", spec]);
    }
    Server::start(&args)
}

/// The case as `/predict` takes it: a text, or a pair.
fn input(case: &Value) -> Value {
    match case.get("input") {
        Some(text) => text.clone(),
        None => json!([case["query"], case["document"]]),
    }
}

/// A case's probabilities (softmax, or a sigmoid per label) by label name.
fn expected(reference: &Value, case: &Value, field: &str) -> Vec<(String, f64)> {
    let labels = &reference["id2label"];
    case[field]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let label = labels[i.to_string()].as_str().unwrap().to_string();
            (label, v.as_f64().unwrap())
        })
        .collect()
}

/// Checks one answer (every label, best first) against the case.
fn check(name: &str, reference: &Value, case: &Value, got: &Value, raw: bool) {
    let got = got.as_array().expect("a list of predictions");
    let scores: Vec<(String, f64)> = got
        .iter()
        .map(|p| {
            (
                p["label"].as_str().unwrap().to_string(),
                p["score"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(
        scores.windows(2).all(|w| w[0].1 >= w[1].1),
        "{name}: not best first: {scores:?}"
    );
    let multi_label = reference["problem_type"] == "multi_label_classification";
    let (field, tolerance) = match (raw, multi_label) {
        (true, _) => ("logits", LOGIT_TOLERANCE),
        (false, true) => ("sigmoid", PROBABILITY_TOLERANCE),
        (false, false) => ("softmax", PROBABILITY_TOLERANCE),
    };
    let want = expected(reference, case, field);
    assert_eq!(scores.len(), want.len(), "{name}: {scores:?}");
    for (label, value) in &want {
        let (_, score) = scores.iter().find(|(l, _)| l == label).expect(label);
        assert!(
            (score - value).abs() <= tolerance,
            "{name} {:?}: {label} {field} {score} against {value}",
            input(case)
        );
    }
    if raw {
        return;
    }
    if multi_label {
        let mut chosen: Vec<&str> = scores
            .iter()
            .filter(|(_, s)| *s >= 0.5)
            .map(|(l, _)| l.as_str())
            .collect();
        let mut labels: Vec<&str> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        chosen.sort_unstable();
        labels.sort_unstable();
        assert_eq!(chosen, labels, "{name} {:?}", input(case));
    } else {
        assert_eq!(scores[0].0, case["label"], "{name} {:?}", input(case));
    }
}

#[test]
fn classifiers_match_their_references_alone_and_batched() {
    let classifiers = classifiers();
    let server = server(&classifiers);
    for (name, reference) in &classifiers {
        let cases = reference["cases"].as_array().unwrap();
        for raw in [false, true] {
            for case in cases {
                let body = json!({"model": name, "inputs": input(case), "raw_scores": raw});
                let (status, got) = server.post_json("/predict", &body);
                assert_eq!(status, 200, "{name}: {got}");
                check(name, reference, case, &got, raw);
            }
            let batch: Vec<Value> = cases
                .iter()
                .map(|case| match input(case) {
                    Value::String(text) => json!([text]),
                    pair => pair,
                })
                .collect();
            let body = json!({"model": name, "inputs": batch, "raw_scores": raw});
            let (status, got) = server.post_json("/predict", &body);
            assert_eq!(status, 200, "{name}: {got}");
            let got = got.as_array().unwrap();
            assert_eq!(got.len(), cases.len());
            for (case, answer) in cases.iter().zip(got) {
                check(name, reference, case, answer, raw);
            }
        }
    }
}

/// Where `huggingface_hub.InferenceClient.text_classification` posts: the base URL.
#[test]
fn a_classifier_answers_at_the_root_and_says_what_it_is() {
    let classifiers = classifiers();
    let server = server(&classifiers);
    let (name, reference) = classifiers
        .iter()
        .find(|(_, r)| r["cases"][0].get("input").is_some())
        .unwrap();
    let case = &reference["cases"][1];
    let body = json!({"model": name, "inputs": case["input"], "parameters": {"top_k": null}});
    let (status, got) = server.post_json("/", &body);
    assert_eq!(status, 200, "{got}");
    check(name, reference, case, &got, false);
    // A batch in `/predict`'s grammar, which `/embed`'s refuses, is answered there too.
    let batch = json!({"model": name, "inputs": [[case["input"]], [case["input"]]]});
    let (status, got) = server.post_json("/", &batch);
    assert_eq!(status, 200, "{got}");
    for answer in got.as_array().unwrap() {
        check(name, reference, case, answer, false);
    }

    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    for (name, _) in &classifiers {
        let model = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} in {models}"));
        assert_eq!(model["task"], "classification", "{model}");
    }
    let (status, info) = server.get(&format!("/info?model={name}"));
    assert_eq!(status, 200);
    assert_eq!(
        info["model_type"]["classifier"]["id2label"], reference["id2label"],
        "{info}"
    );

    // The wrong route for the kind is a 400 that names the right one, in the route's shape.
    let (status, json) = server.post_json("/v1/embeddings", &json!({"model": name, "input": "x"}));
    assert!(assert_error(status, &json, 400, None).contains("/predict"));
    let (status, json) = server.post_json(
        "/v1/rerank",
        &json!({"model": name, "query": "q", "documents": ["d"]}),
    );
    assert!(assert_error(status, &json, 400, None).contains("/predict"));
    let (status, json) = server.post_json("/predict", &json!({"model": name, "inputs": []}));
    assert_eq!(
        (status, &json["error_type"]),
        (400, &json!("empty")),
        "{json}"
    );
    let (status, json) = server.post_json(
        "/predict",
        &json!({"model": name, "inputs": ["a", "b", "c"]}),
    );
    assert_eq!(
        (status, &json["error_type"]),
        (400, &json!("validation")),
        "{json}"
    );
}

#[test]
fn predict_refuses_a_model_that_is_not_a_classifier_in_teis_shape() {
    let minilm = common::model_dir("sentence-transformers/all-MiniLM-L6-v2");
    let spec = format!("minilm={}", minilm.display());
    let server = Server::start(&["--model", &spec]);
    let (status, json) = server.post_json("/predict", &json!({"inputs": "x"}));
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["error_type"], "validation");
    assert!(
        json["error"].as_str().unwrap().contains("not a classifier"),
        "{json}"
    );
}

/// Weights above this are the reference's terms; below it a term may come or go.
const SPARSE_TERM: f64 = 1e-4;
const SPARSE_TOLERANCE: f64 = 1e-4;

fn check_sparse(name: &str, case: &Value, got: &Value) {
    let got: BTreeMap<u64, f64> = got
        .as_array()
        .expect("a list of weights")
        .iter()
        .map(|w| (w["index"].as_u64().unwrap(), w["value"].as_f64().unwrap()))
        .collect();
    assert!(
        got.values().all(|&v| v > 0.0),
        "{name}: only non-zero weights are sent"
    );
    let want: BTreeMap<u64, f64> = case["indices"]
        .as_array()
        .unwrap()
        .iter()
        .zip(case["values"].as_array().unwrap())
        .map(|(i, v)| (i.as_u64().unwrap(), v.as_f64().unwrap()))
        .collect();
    let terms = |weights: &BTreeMap<u64, f64>| -> Vec<u64> {
        weights
            .iter()
            .filter(|&(_, &v)| v > SPARSE_TERM)
            .map(|(&i, _)| i)
            .collect()
    };
    assert_eq!(
        terms(&got),
        terms(&want),
        "{name} {} ({}): the terms",
        case["input"],
        case["task"]
    );
    for index in got.keys().chain(want.keys()) {
        let (a, b) = (
            got.get(index).unwrap_or(&0.0),
            want.get(index).unwrap_or(&0.0),
        );
        assert!(
            (a - b).abs() <= SPARSE_TOLERANCE,
            "{name} {}: term {index} weighs {a}, the library's {b}",
            case["input"]
        );
    }
}

#[test]
fn sparse_encoders_match_their_references_alone_and_batched() {
    let encoders = sparse_encoders();
    let server = server(&encoders);
    for (name, reference) in &encoders {
        // An inference-free model's cases say their task: its route.
        let body = |inputs: Value, task: &Value| match task.as_str() {
            Some(task) => json!({"model": name, "inputs": inputs, "input_type": task}),
            None => json!({"model": name, "inputs": inputs}),
        };
        let cases = reference["cases"].as_array().unwrap();
        for case in cases {
            let (status, got) =
                server.post_json("/embed_sparse", &body(case["input"].clone(), &case["task"]));
            assert_eq!(status, 200, "{name}: {got}");
            check_sparse(name, case, &got[0]);
        }
        let mut tasks: Vec<&Value> = cases.iter().map(|case| &case["task"]).collect();
        tasks.dedup();
        for task in tasks {
            let group: Vec<&Value> = cases.iter().filter(|case| &case["task"] == task).collect();
            let inputs: Vec<&Value> = group.iter().map(|case| &case["input"]).collect();
            let (status, got) = server.post_json("/embed_sparse", &body(json!(inputs), task));
            assert_eq!(status, 200, "{name}: {got}");
            for (case, answer) in group.iter().zip(got.as_array().unwrap()) {
                check_sparse(name, case, answer);
            }
        }

        let (status, models) = server.get("/v1/models");
        assert_eq!(status, 200);
        let listed = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == name.as_str());
        assert_eq!(listed.unwrap()["task"], "sparse-embedding");
        let (status, json) =
            server.post_json("/v1/embeddings", &json!({"model": name, "input": "x"}));
        assert!(assert_error(status, &json, 400, None).contains("/embed_sparse"));
        let (status, json) = server.post_json("/embed", &json!({"model": name, "inputs": "x"}));
        assert_eq!(
            (status, &json["error_type"]),
            (400, &json!("validation")),
            "{json}"
        );
    }
}

/// The Router models whose references hold dense vectors.
fn dense_routers() -> Vec<(String, Value)> {
    let routers: Vec<_> = references("embedding", 0)
        .into_iter()
        .filter(|(name, _)| kinds_root().join(name).join("router_config.json").exists())
        .collect();
    assert!(
        !routers.is_empty(),
        "no dense Router model in ../shared/kinds"
    );
    routers
}

const ROUTE_COSINE: f64 = 0.99999;

fn as_f32(values: &Value) -> Vec<f32> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

/// `input_type` picks the route (`encode_query`, `encode_document`); none is the default
/// route (`encode()`); Cohere's spellings pick the same; a configured name fixes it.
#[test]
fn router_models_route_by_input_type_alone_and_batched() {
    for (name, reference) in dense_routers() {
        let source = kinds_root().join(&name);
        let (_config_dir, config) = common::config_file(&format!(
            "[[models]]\nname = \"{name}\"\nsource = {source:?}\n\n\
             [[models]]\nname = \"{name}-query\"\nsource = {source:?}\ninput_type = \"query\"\n"
        ));
        let server = Server::start(&["--config", config.to_str().unwrap()]);
        let cases = reference["cases"].as_array().unwrap();
        let check = |case: &Value, got: &[f32], how: &str| {
            let similarity = cosine(got, &as_f32(&case["embedding"]));
            assert!(
                similarity >= ROUTE_COSINE,
                "{name} {how} {:?} as {}: cosine {similarity}",
                case["input"],
                case["task"]
            );
        };
        for case in cases {
            let extra = match case["task"].as_str() {
                Some(task) => json!({"input_type": task}),
                None => json!({}),
            };
            let got = server.embed(&name, case["input"].clone(), extra);
            check(case, &got[0], "alone");
        }
        for (task, spelling) in [
            (Some("query"), Some("search_query")),
            (Some("document"), Some("passage")),
            (None, None),
        ] {
            let group: Vec<&Value> = cases
                .iter()
                .filter(|c| c["task"].as_str() == task)
                .collect();
            assert!(!group.is_empty(), "{name}: cases for {task:?}");
            let inputs: Vec<&Value> = group.iter().map(|c| &c["input"]).collect();
            let extra = spelling.map_or(json!({}), |s| json!({"input_type": s}));
            let got = server.embed(&name, json!(inputs), extra);
            for (case, vector) in group.iter().zip(&got) {
                check(case, vector, "batched");
            }
            if task == Some("query") {
                let got = server.embed(&format!("{name}-query"), json!(inputs), json!({}));
                for (case, vector) in group.iter().zip(&got) {
                    check(case, vector, "by its configured name");
                }
                let (status, tei) = server.post_json(
                    "/embed",
                    &json!({"model": name, "inputs": inputs, "input_type": "query"}),
                );
                assert_eq!(status, 200, "{tei}");
                for (case, vector) in group.iter().zip(tei.as_array().unwrap()) {
                    check(case, &as_f32(vector), "through TEI's /embed");
                }
            }
        }
        let (status, json) = server.post_json(
            "/v1/embeddings",
            &json!({"model": name, "input": "x", "input_type": "title"}),
        );
        let message = assert_error(status, &json, 400, None);
        assert!(message.contains("input type"), "{json}");
    }
}

/// A models directory lists the kinds' folders with their tasks, and never their parts:
/// `onnx/` holds a graph and a Router's route folders hold whole pipelines.
#[test]
fn models_directories_list_each_kind_with_its_task_and_no_parts() {
    let scratch = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(kinds_root(), scratch.path().join("kinds")).unwrap();
    let root = scratch.path().to_str().unwrap();
    let kinds = kinds_root();
    let server = Server::start(&[
        "--models-dir",
        root,
        "--models-dir",
        kinds.to_str().unwrap(),
    ]);
    let (status, models) = server.get("/v1/models");
    assert_eq!(status, 200);
    let listed: BTreeMap<String, String> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let task = m["task"].as_str().unwrap_or("?").to_string();
            (m["id"].as_str().unwrap().to_string(), task)
        })
        .collect();
    let expected: BTreeMap<String, String> = common::sorted_dirs(&kinds)
        .iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let reference: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                    .unwrap();
            let case = &reference["cases"][0];
            let task = if case.get("indices").is_some() {
                "sparse-embedding"
            } else if case.get("logits").is_some() {
                "classification"
            } else {
                "embedding"
            };
            (format!("kinds/{name}"), task.to_string())
        })
        .collect();
    assert_eq!(listed, expected);
}
