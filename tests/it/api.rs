//! The OpenAI embeddings API over real HTTP: encodings, dimensions, token-id input, model
//! listing, and every error in OpenAI's envelope.

use crate::common;

use base64::Engine;
use common::{Server, assert_error, cosine, models_root};
use serde_json::{Value, json};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const TEXTS: [&str; 3] = ["The quick brown fox jumps over the lazy dog.", "Hello", ""];

fn server() -> Server {
    Server::start(&["--models-dir", models_root().to_str().unwrap()])
}

#[test]
fn base64_decodes_to_the_float_vectors() {
    let server = server();
    let floats = server.embed(MINILM, json!(TEXTS), json!({}));
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": TEXTS, "encoding_format": "base64"}),
    );
    assert_eq!(status, 200, "{json}");
    for (item, float) in json["data"].as_array().unwrap().iter().zip(&floats) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(item["embedding"].as_str().expect("base64 string"))
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(
            &decoded, float,
            "base64 must carry exactly the float vector"
        );
    }
}

#[test]
fn dimensions_truncate_and_renormalize() {
    let server = server();
    let full = server.embed(MINILM, json!(TEXTS[0]), json!({}));
    let short = server.embed(MINILM, json!(TEXTS[0]), json!({"dimensions": 64}));
    assert_eq!(short[0].len(), 64);
    let norm: f32 = short[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    assert!(cosine(&short[0], &full[0][..64]) > 0.999999);

    for bad in [0, 385] {
        let (status, json) = server.post_json(
            "/v1/embeddings",
            &json!({"model": MINILM, "input": "x", "dimensions": bad}),
        );
        let message = assert_error(status, &json, 400, None);
        assert_eq!(json["error"]["param"], "dimensions");
        assert!(message.contains("384"), "{message}");
    }
}

#[test]
fn token_ids_are_read_as_cl100k_and_give_the_text_vectors() {
    let server = server();
    let cl100k = tiktoken_rs::cl100k_base_singleton();
    let texts = [TEXTS[0], "Café au lait, naïve résumé — 東京 🚀"];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| cl100k.encode_ordinary(t)).collect();
    let from_text = server.embed(MINILM, json!(texts), json!({}));
    let single = server.embed(MINILM, json!(ids[0]), json!({}));
    assert_eq!(single.len(), 1, "a flat id array is one input");
    assert!(cosine(&single[0], &from_text[0]) > 0.999999);
    let batch = server.embed(MINILM, json!(ids), json!({}));
    for (got, want) in batch.iter().zip(&from_text) {
        assert!(cosine(got, want) > 0.999999);
    }
    // Prompts apply to decoded text as to typed text.
    let prompted = server.embed(
        "tiny/bert-cls",
        json!([ids[0]]),
        json!({"prompt_name": "query"}),
    );
    let typed = server.embed(
        "tiny/bert-cls",
        json!([texts[0]]),
        json!({"prompt_name": "query"}),
    );
    assert_eq!(prompted, typed);

    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": [[9906, 200000]]}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(
        message.contains("200000") && message.contains("cl100k_base"),
        "{message}"
    );
}

#[test]
fn native_token_ids_are_the_model_vocabulary() {
    let (_dir, config) = common::config_file(&format!(
        "models_dirs = [{:?}]\n[server]\ntoken_input = \"native\"\n",
        models_root().to_str().unwrap()
    ));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let mut tokenizer =
        tokenizers::Tokenizer::from_file(common::model_dir(MINILM).join("tokenizer.json")).unwrap();
    // The file pads every sequence to 128; a client sends the unpadded ids.
    tokenizer.with_padding(None);
    let ids: Vec<Vec<u32>> = TEXTS[..2]
        .iter()
        .map(|t| tokenizer.encode(*t, true).unwrap().get_ids().to_vec())
        .collect();
    let from_text = server.embed(MINILM, json!(TEXTS[..2]), json!({}));
    let batch = server.embed(MINILM, json!(ids), json!({}));
    for (got, want) in batch.iter().zip(&from_text) {
        assert!(cosine(got, want) > 0.999999);
    }
    for (body, needle) in [
        (
            json!({"model": MINILM, "input": [[101, 30522, 102]]}),
            "30522",
        ),
        (
            json!({"model": "tiny/bert-cls", "input": [1, 2], "prompt_name": "query"}),
            "prompt",
        ),
    ] {
        let (status, json) = server.post_json("/v1/embeddings", &body);
        let message = assert_error(status, &json, 400, None);
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn token_ids_can_be_refused_per_model() {
    let (_dir, config) = common::config_file(&format!(
        "[[models]]\nname = \"text-only\"\nsource = {:?}\ntoken_input = \"reject\"\n",
        common::model_dir("tiny/bert-mean").to_str().unwrap()
    ));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "text-only", "input": [1, 2, 3]}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(message.contains("text only"), "{message}");
    assert_eq!(server.embed("text-only", json!("fine"), json!({})).len(), 1);
}

#[test]
fn request_limits_and_truncation() {
    let (_dir, config) = common::config_file(&format!(
        "models_dirs = [{:?}]\n[server]\nmax_tokens_per_request = 20\n[[models]]\nname = \"strict\"\nsource = {:?}\ntruncate = false\n",
        models_root().to_str().unwrap(),
        common::model_dir("tiny/bert-mean").to_str().unwrap()
    ));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": vec!["a"; 2049]}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(message.contains("more than 2048 inputs"), "{message}");
    assert_eq!(json["error"]["param"], "input");
    // Seven inputs of three tokens: 21 tokens, one over the configured 20.
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": vec!["a"; 7]}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(
        message.contains("21 tokens") && message.contains("20"),
        "{message}"
    );
    assert_eq!(
        server.embed(MINILM, json!(vec!["a"; 6]), json!({})).len(),
        6
    );

    let long = "word ".repeat(100);
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "strict", "input": ["short", long]}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(
        message.contains("input[1]") && message.contains("64 tokens"),
        "{message}"
    );
    let (status, _) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "strict", "input": [long], "truncate": true}),
    );
    assert_eq!(
        status, 400,
        "over the 20-token request limit even when truncated"
    );
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "tiny/bert-mean", "input": "word word", "truncate": false}),
    );
    assert_eq!(status, 200, "{json}");
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "tiny/bert-mean", "input": long, "truncate": false}),
    );
    assert_error(status, &json, 400, None);
}

#[test]
fn usage_counts_real_tokens_and_empty_text_is_valid() {
    let server = server();
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": ["Hello", ""], "user": "u-1", "extra": true}),
    );
    assert_eq!(status, 200, "{json}");
    // [CLS] hello [SEP] + [CLS] [SEP]
    assert_eq!(json["usage"]["prompt_tokens"], 5);
    assert_eq!(json["usage"]["total_tokens"], 5);
    assert_eq!(json["data"][1]["embedding"].as_array().unwrap().len(), 384);
}

#[test]
fn legacy_route_without_v1_prefix() {
    let server = server();
    let (status, json) = server.post_json(
        "/embeddings",
        &json!({"model": "tiny/bert-mean", "input": "hi"}),
    );
    assert_eq!(status, 200, "{json}");
    let (status, json) = server.get("/models");
    assert_eq!(status, 200, "{json}");
}

#[test]
fn models_are_listed_and_retrieved_in_openai_shape() {
    let server = server();
    let (status, json) = server.get("/v1/models");
    assert_eq!(status, 200);
    assert_eq!(json["object"], "list");
    let ids: Vec<&str> = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        MINILM,
        "tiny/bert-cls",
        "tiny/bert-mean",
        "tiny/bert-pooled",
        "tiny/decoder-lasttoken",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let model = &json["data"][0];
    assert_eq!(model["object"], "model");
    assert!(model["created"].as_u64().is_some() && model["owned_by"].is_string());

    let (status, json) = server.get(&format!("/v1/models/{MINILM}"));
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["id"], MINILM);
    let (status, json) = server.get("/v1/models/no/such-model");
    assert_error(status, &json, 404, Some("model_not_found"));
}

#[test]
fn request_errors_use_the_openai_envelope() {
    let server = server();
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (
            json!({"model": "nope/missing", "input": "x"}),
            404,
            "model",
            Some("model_not_found"),
        ),
        (json!({"model": MINILM, "input": []}), 400, "input", None),
        (json!({"input": "x"}), 400, "model", None),
        (json!({"model": MINILM}), 400, "input", None),
        (
            json!({"model": MINILM, "input": ["a", 1]}),
            400,
            "input[1]",
            None,
        ),
        (
            json!({"model": MINILM, "input": [[]]}),
            400,
            "input[0]",
            None,
        ),
        (
            json!({"model": MINILM, "input": [-5]}),
            400,
            "negative",
            None,
        ),
        (
            json!({"model": MINILM, "input": {"text": "x"}}),
            400,
            "input",
            None,
        ),
        (
            json!({"model": MINILM, "input": "x", "encoding_format": "hex"}),
            400,
            "hex",
            None,
        ),
        (
            json!({"model": "tiny/bert-cls", "input": "x", "prompt_name": "nope"}),
            400,
            "query",
            None,
        ),
    ];
    for (body, want_status, needle, code) in cases {
        let (status, json) = server.post_json("/v1/embeddings", &body);
        let message = assert_error(status, &json, want_status, code);
        assert!(message.contains(needle), "{body} -> {message}");
        assert!(
            json["error"]["param"].is_string(),
            "a bad field is named: {json}"
        );
    }
    // Errors that need no model: tests/envelopes.rs, in process.
}

#[test]
fn oversized_bodies_get_413() {
    let server = Server::start(&[
        "--models-dir",
        models_root().to_str().unwrap(),
        "--max-body-bytes",
        "1000",
    ]);
    let big = "word ".repeat(400);
    let (status, json) =
        server.post_json("/v1/embeddings", &json!({"model": MINILM, "input": big}));
    let message = assert_error(status, &json, 413, Some("request_too_large"));
    assert!(message.contains("1000"), "{message}");
    // A body within the limit still works on the same server.
    let (status, _) = server.post_json("/v1/embeddings", &json!({"model": MINILM, "input": "ok"}));
    assert_eq!(status, 200);
}
