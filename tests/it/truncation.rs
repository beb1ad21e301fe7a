//! Cutting from the start over HTTP: TEI's `truncation_direction: "Left"`, the same extension
//! on `/v1/embeddings`, and Cohere's `truncate: "START"`. A long text (past the window where
//! long texts are bounded before tokenizing) is built of words that are one token each, so
//! its last tokens are a text of their own: cut from the start, the long text must embed
//! (and rerank) exactly as that text does whole.

use crate::common;

use common::{Server, models_root_arg};
use serde_json::{Value, json};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const RERANKER: &str = "rerank/bert-cross-encoder";

/// One token each in both models' vocabularies.
const NOISE: [&str; 6] = ["the", "of", "and", "to", "in", "is"];
const TAIL: [&str; 12] = [
    "one", "you", "all", "there", "would", "their", "we", "been", "has", "when", "who", "will",
];

fn words(from: &[&str], count: usize) -> String {
    from.iter()
        .cycle()
        .take(count)
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The tail of `tail_tokens` tokens after 6,000 words (about 21 KiB) of noise.
fn long_text(tail_tokens: usize) -> (String, String) {
    let tail = words(&TAIL, tail_tokens);
    (format!("{} {tail}", words(&NOISE, 6000)), tail)
}

fn max_abs_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// The tokens the model keeps of a text, special tokens included: its length.
fn max_tokens(server: &Server, model: &str) -> usize {
    let (status, json) = server.post_json(
        "/tokenize",
        &json!({"model": model, "inputs": words(&NOISE, 5000)}),
    );
    assert_eq!(status, 200, "{json}");
    json[0].as_array().unwrap().len()
}

#[test]
fn a_text_cut_from_the_start_embeds_as_its_last_tokens_on_every_route() {
    let root = models_root_arg();
    let server = Server::start(&["--models-dir", &root]);
    let length = max_tokens(&server, MINILM);
    let (long, tail) = long_text(length - 2);

    // The tail fills the model exactly: it is embedded whole, untruncated.
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": tail, "truncate": false}),
    );
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["usage"]["prompt_tokens"], length);
    let expected = floats(&json["data"][0]["embedding"]);

    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": [long, "short"], "truncation_direction": "Left"}),
    );
    assert_eq!(status, 200, "{json}");
    let from_start = floats(&json["data"][0]["embedding"]);
    assert!(max_abs_difference(&from_start, &expected) < 1e-6);

    let (status, json) =
        server.post_json("/v1/embeddings", &json!({"model": MINILM, "input": long}));
    assert_eq!(status, 200, "{json}");
    let from_end = floats(&json["data"][0]["embedding"]);
    assert!(
        max_abs_difference(&from_end, &expected) > 0.01,
        "cut at the end, the long text must embed its noise"
    );

    let (status, json) = server.post_json(
        "/embed",
        &json!({"model": MINILM, "inputs": long, "truncation_direction": "Left"}),
    );
    assert_eq!(status, 200, "{json}");
    assert!(max_abs_difference(&floats(&json[0]), &expected) < 1e-6);

    let (status, json) = server.post_json(
        "/v2/embed",
        &json!({"model": MINILM, "texts": [long], "truncate": "START",
                "input_type": "search_document", "embedding_types": ["float"]}),
    );
    assert_eq!(status, 200, "{json}");
    assert!(max_abs_difference(&floats(&json["embeddings"]["float"][0]), &expected) < 1e-6);
    assert_eq!(json["meta"]["billed_units"]["input_tokens"], length);

    // Refusing over-long inputs refuses them from either end.
    for (route, body) in [
        (
            "/embed",
            json!({"model": MINILM, "inputs": long, "truncate": false, "truncation_direction": "Left"}),
        ),
        (
            "/v2/embed",
            json!({"model": MINILM, "texts": [long], "truncate": "NONE"}),
        ),
    ] {
        let (status, json) = server.post_json(route, &body);
        assert_eq!(status, 400, "{route}: {json}");
    }
}

#[test]
fn a_pair_cut_from_the_start_scores_as_its_last_tokens() {
    let root = models_root_arg();
    let server = Server::start(&["--models-dir", &root]);
    let length = max_tokens(&server, RERANKER);
    // [CLS] query [SEP] document [SEP], the query one token.
    let (long, tail) = long_text(length - 4);
    let score = |document: &str, extra: Value| {
        let mut body = json!({"model": RERANKER, "query": "what", "texts": [document]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, json) = server.post_json("/rerank", &body);
        assert_eq!(status, 200, "{json}");
        json[0]["score"].as_f64().unwrap()
    };
    let expected = score(&tail, json!({"truncate": false}));
    let from_start = score(&long, json!({"truncation_direction": "Left"}));
    assert!(
        (from_start - expected).abs() < 1e-6,
        "{from_start} vs {expected}"
    );
    let from_end = score(&long, json!({}));
    assert!(
        (from_end - expected).abs() > 1e-4,
        "{from_end} vs {expected}"
    );

    // Cohere's first tokens of each document are not combined with cutting from the start.
    let (status, json) = server.post_json(
        "/rerank",
        &json!({"model": RERANKER, "query": "what", "documents": [long],
                "max_tokens_per_doc": 8, "truncation_direction": "Left"}),
    );
    assert_eq!(status, 400, "{json}");
    assert!(json.to_string().contains("max_tokens_per_doc"), "{json}");
}
