//! Every model in ../shared/models, served over HTTP, reproduces the vectors that
//! sentence-transformers computed (reference.json): one input per request, and all inputs in
//! one request, where padding and batch-mates differ.

mod common;

use std::collections::BTreeMap;

use common::{Server, cosine, reference};
use serde_json::{Value, json};

const FP32_MIN_COSINE: f64 = 0.99999;

fn check(server: &Server, model: &str, reference_id: &str, min_cosine: f64) {
    let reference = reference(reference_id);
    let mut worst = 1.0f64;
    let mut compare = |case: &common::Case, got: &[f32], how: &str| {
        let c = cosine(got, &case.embedding);
        worst = worst.min(c);
        assert!(
            c >= min_cosine,
            "{model} {how}: cosine {c} < {min_cosine} for {:?} (prompt {:?})",
            &case.input[..case.input.len().min(40)],
            case.prompt_name
        );
    };

    // One input per request.
    for case in &reference.cases {
        let extra = match &case.prompt_name {
            Some(name) => json!({"prompt_name": name}),
            None => json!({}),
        };
        let got = server.embed(model, json!(case.input), extra);
        compare(case, &got[0], "alone");
    }

    // Every case sharing a prompt in one request.
    let mut groups: BTreeMap<Option<String>, Vec<&common::Case>> = BTreeMap::new();
    for case in &reference.cases {
        groups
            .entry(case.prompt_name.clone())
            .or_default()
            .push(case);
    }
    for (prompt, cases) in groups {
        let inputs: Vec<&str> = cases.iter().map(|c| c.input.as_str()).collect();
        let extra = prompt.map_or(json!({}), |p| json!({"prompt_name": p}));
        let got = server.embed(model, json!(inputs), extra);
        assert_eq!(got.len(), cases.len());
        for (case, vector) in cases.iter().zip(&got) {
            compare(case, vector, "batched");
        }
    }
    eprintln!(
        "{model}: worst cosine {worst:.9} over {} cases",
        reference.cases.len()
    );
}

fn serve_models_dir() -> Server {
    Server::start(&["--models-dir", common::models_root().to_str().unwrap()])
}

#[test]
fn all_minilm_l6_v2_fp32() {
    let server = serve_models_dir();
    let id = "sentence-transformers/all-MiniLM-L6-v2";
    check(&server, id, id, FP32_MIN_COSINE);
}

#[test]
fn tiny_bert_mean() {
    let server = serve_models_dir();
    check(&server, "tiny/bert-mean", "tiny/bert-mean", FP32_MIN_COSINE);
}

#[test]
fn tiny_bert_cls_with_prompts() {
    let server = serve_models_dir();
    let reference = reference("tiny/bert-cls");
    assert!(
        reference
            .cases
            .iter()
            .any(|c| c.prompt_name.as_deref() == Some("query"))
    );
    assert!(
        reference
            .cases
            .iter()
            .any(|c| c.prompt_name.as_deref() == Some("document"))
    );
    check(&server, "tiny/bert-cls", "tiny/bert-cls", FP32_MIN_COSINE);
}

#[test]
fn tiny_decoder_last_token() {
    let server = serve_models_dir();
    check(
        &server,
        "tiny/decoder-lasttoken",
        "tiny/decoder-lasttoken",
        FP32_MIN_COSINE,
    );
}

#[test]
fn tiny_bert_pooled_in_graph() {
    let server = serve_models_dir();
    check(
        &server,
        "tiny/bert-pooled",
        "tiny/bert-pooled",
        FP32_MIN_COSINE,
    );
}

#[test]
fn all_minilm_l6_v2_int8_through_config() {
    let source = common::model_dir("sentence-transformers/all-MiniLM-L6-v2");
    let (_dir, config) = common::config_file(&format!(
        "[[models]]\nname = \"minilm-int8\"\nsource = {:?}\nonnx_file = \"onnx/model_qint8.onnx\"\n",
        source.to_str().unwrap()
    ));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    check(
        &server,
        "minilm-int8",
        "sentence-transformers/all-MiniLM-L6-v2",
        0.98,
    );
}

#[test]
fn long_input_is_truncated_at_max_seq_length_and_counted() {
    let server = serve_models_dir();
    let id = "sentence-transformers/all-MiniLM-L6-v2";
    let reference = reference(id);
    let long = reference
        .cases
        .iter()
        .max_by_key(|c| c.input.len())
        .unwrap();
    let (status, json) =
        server.post_json("/v1/embeddings", &json!({"model": id, "input": long.input}));
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["usage"]["prompt_tokens"], reference.max_seq_length);
    assert_eq!(json["usage"]["total_tokens"], reference.max_seq_length);
    assert_eq!(json["model"], Value::from(id));
    assert_eq!(json["object"], "list");
}
