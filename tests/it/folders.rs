//! Model folders at the edges of what sentence-transformers exports: inputs that tokenize to
//! nothing, and folders whose modules cannot be reproduced (refused at load, never served).

use crate::common;

use std::path::Path;

use common::{Server, assert_error, cosine, model_dir, reference};
use serde_json::json;

/// Copies a fixture folder, so a test can change its files.
fn copy_fixture(id: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&model_dir(id), dir.path());
    dir
}

fn serve(models: &[(&str, &Path)]) -> Server {
    let mut config = String::new();
    for (name, dir) in models {
        config += &format!(
            "[[models]]\nname = {name:?}\nsource = {:?}\n",
            dir.to_str().unwrap()
        );
    }
    let (dir, path) = common::config_file(&config);
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    drop(dir);
    server
}

#[test]
fn an_empty_text_without_special_tokens_gets_the_vector_sentence_transformers_gives() {
    // This tokenizer adds no special tokens: "" is zero tokens. Weighted-mean pooling over no
    // tokens is zeros in sentence-transformers (the clamped divisor); so here.
    let weighted = model_dir("zoo/qwen3-weightedmean");
    let cls = copy_fixture("zoo/qwen3-weightedmean");
    std::fs::write(
        cls.path().join("1_Pooling/config.json"),
        r#"{"embedding_dimension": 32, "pooling_mode": "cls"}"#,
    )
    .unwrap();
    let server = serve(&[("weighted", &weighted), ("cls", cls.path())]);

    let hello = reference("zoo/qwen3-weightedmean")
        .cases
        .into_iter()
        .find(|c| c.input == "Hello")
        .unwrap();
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "weighted", "input": ["", "Hello", ""]}),
    );
    assert_eq!(status, 200, "{json}");
    let vectors = common::vectors(&json);
    assert_eq!(vectors[0], vec![0.0; 32]);
    assert_eq!(vectors[2], vec![0.0; 32]);
    assert!(cosine(&vectors[1], &hello.embedding) >= 0.99999);
    let hello_tokens = server
        .post_json(
            "/v1/embeddings",
            &json!({"model": "weighted", "input": "Hello"}),
        )
        .1["usage"]["prompt_tokens"]
        .clone();
    assert_eq!(json["usage"]["prompt_tokens"], hello_tokens);

    // CLS over no tokens has nothing to give (sentence-transformers returns a padding row or
    // fails): a clear 400 naming the input, and the model keeps serving.
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "cls", "input": ["Hello", ""]}),
    );
    let message = assert_error(status, &json, 400, None);
    assert!(message.contains("input[1] has no tokens"), "{message}");
    assert_eq!(json["error"]["param"], "input");
    assert_eq!(server.embed("cls", json!("Hello"), json!({})).len(), 1);
}

#[test]
fn folders_that_cannot_be_reproduced_are_refused_at_load_with_the_reason() {
    let layer_norm = copy_fixture("zoo/bert-mean");
    let modules = std::fs::read_to_string(layer_norm.path().join("modules.json")).unwrap();
    let modules = modules.replace(
        "sentence_transformers.models.Normalize",
        "sentence_transformers.models.LayerNorm",
    );
    std::fs::write(layer_norm.path().join("modules.json"), modules).unwrap();

    let custom_activation = copy_fixture("zoo/bert-labse");
    let config = std::fs::read_to_string(custom_activation.path().join("2_Dense/config.json"))
        .unwrap()
        .replace("torch.nn.modules.activation.Tanh", "my_package.Swish");
    std::fs::write(custom_activation.path().join("2_Dense/config.json"), config).unwrap();

    let pickled = copy_fixture("zoo/distilbert-dense");
    std::fs::rename(
        pickled.path().join("2_Dense/model.safetensors"),
        pickled.path().join("2_Dense/pytorch_model.bin"),
    )
    .unwrap();

    let server = serve(&[
        ("layer-norm", layer_norm.path()),
        ("custom-activation", custom_activation.path()),
        ("pickled", pickled.path()),
        ("fine", &model_dir("zoo/bert-mean")),
    ]);
    for (model, needles) in [
        (
            "layer-norm",
            ["sentence_transformers.models.LayerNorm", "not supported"],
        ),
        ("custom-activation", ["my_package.Swish", "2_Dense"]),
        ("pickled", ["pytorch_model.bin", "safetensors"]),
    ] {
        let (status, json) =
            server.post_json("/v1/embeddings", &json!({"model": model, "input": "Hello"}));
        let message = assert_error(status, &json, 500, Some("model_load_failed"));
        for needle in needles {
            assert!(
                message.contains(needle),
                "{model}: {needle} not in {message}"
            );
        }
    }
    assert_eq!(server.embed("fine", json!("Hello"), json!({})).len(), 1);
}
