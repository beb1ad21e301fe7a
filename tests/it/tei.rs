//! TEI's routes as TEI's clients call them: `/embed` and `/` give sentence-transformers'
//! vectors, the model comes from the request or the server's default, `/tokenize` and
//! `/info` describe the model, errors come in TEI's shape, and `/openapi.json` lists every
//! route.

use crate::common;

use common::{Server, cosine, models_root_arg, reference};
use serde_json::{Value, json};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn vectors(json: &Value) -> Vec<Vec<f32>> {
    json.as_array()
        .unwrap_or_else(|| panic!("not a list of vectors: {json}"))
        .iter()
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn embed_gives_the_reference_vectors_of_the_default_or_named_model() {
    let root = models_root_arg();
    let server = Server::start(&["--models-dir", &root, "--default-model", MINILM]);
    let cases = reference(MINILM).cases;
    let inputs: Vec<&str> = cases.iter().map(|c| c.input.as_str()).collect();
    for route in ["/embed", "/"] {
        let (status, json) = server.post_json(route, &json!({"inputs": inputs}));
        assert_eq!(status, 200, "{json}");
        for (got, case) in vectors(&json).iter().zip(&cases) {
            assert!(
                cosine(got, &case.embedding) >= 0.99999,
                "{route} {:?}",
                case.input
            );
        }
    }
    let (_, one) = server.post_json("/embed", &json!({"inputs": cases[0].input}));
    assert_eq!(vectors(&one).len(), 1);
    assert!(cosine(&vectors(&one)[0], &cases[0].embedding) >= 0.99999);

    // A model without Normalize: TEI normalizes by default, `normalize: false` gives
    // sentence-transformers' own vector.
    let cls = "tiny/bert-cls";
    let case = reference(cls).cases.remove(0);
    let (_, raw) = server.post_json(
        "/embed",
        &json!({"model": cls, "inputs": case.input, "normalize": false}),
    );
    let raw = vectors(&raw).remove(0);
    assert!(cosine(&raw, &case.embedding) >= 0.99999);
    assert!((norm(&raw) - norm(&case.embedding)).abs() < 1e-3 * norm(&case.embedding));
    let (_, normalized) = server.post_json("/embed", &json!({"model": cls, "inputs": case.input}));
    let normalized = vectors(&normalized).remove(0);
    assert!((norm(&normalized) - 1.0).abs() < 1e-6);
    assert!(cosine(&normalized, &case.embedding) >= 0.99999);

    let (_, short) = server.post_json("/embed", &json!({"inputs": "hello", "dimensions": 8}));
    assert_eq!(vectors(&short)[0].len(), 8);
}

#[test]
fn the_only_configured_model_is_the_default_and_none_is_a_tei_error() {
    let root = models_root_arg();
    let server = Server::start(&["--models-dir", &root, "--model", MINILM]);
    let (status, json) = server.post_json("/embed", &json!({"inputs": ["a"]}));
    assert_eq!(status, 200, "{json}");
    let (status, info) = server.get("/info");
    assert_eq!(status, 200);
    assert_eq!(info["model_id"], MINILM);
    assert_eq!(info["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(info["max_input_length"], 256);
    let (_, info) = server.get("/info?model=rerank/xlmr-reranker");
    assert_eq!(
        info["model_type"]["reranker"]["id2label"]["0"], "LABEL_0",
        "{info}"
    );
    assert_eq!(info["max_input_length"], 64);

    let server = Server::start(&["--models-dir", &root]);
    for (route, body) in [
        ("/embed", json!({"inputs": "a"})),
        ("/", json!({"inputs": "a"})),
        ("/tokenize", json!({"inputs": "a"})),
        ("/rerank", json!({"query": "q", "texts": ["a"]})),
    ] {
        let (status, json) = server.post_json(route, &body);
        assert_eq!(status, 400, "{route}: {json}");
        assert_eq!(json["error_type"], "validation", "{route}: {json}");
        assert!(
            json["error"].as_str().unwrap().contains("--default-model"),
            "{json}"
        );
    }
    let (status, json) = server.get("/info");
    assert_eq!(
        (status, json["error_type"].as_str()),
        (400, Some("validation"))
    );

    for (body, fragment) in [
        (json!({"model": MINILM, "inputs": []}), "empty"),
        (
            json!({"model": MINILM, "inputs": "a", "truncation_direction": "Middle"}),
            "Middle",
        ),
        (
            json!({"model": "no/such-model", "inputs": "a"}),
            "does not exist",
        ),
        (json!({"model": MINILM}), "inputs"),
        (
            json!({"model": MINILM, "inputs": {"source_sentence": "a", "sentences": ["b"]}}),
            "POST /similarity",
        ),
    ] {
        let (status, json) = server.post_json("/embed", &body);
        assert!(status == 400 || status == 404, "{body}: {json}");
        assert!(json["error"].as_str().unwrap().contains(fragment), "{json}");
        assert!(json["error_type"].is_string(), "{json}");
    }
    // The OpenAI routes keep OpenAI's envelope.
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "no/such-model", "input": "a"}),
    );
    common::assert_error(status, &json, 404, Some("model_not_found"));
}

#[test]
fn tokenize_shows_the_tokens_the_model_embeds() {
    let root = models_root_arg();
    let server = Server::start(&["--models-dir", &root, "--default-model", MINILM]);
    let (status, json) = server.post_json("/tokenize", &json!({"inputs": ["Hello world", "a"]}));
    assert_eq!(status, 200, "{json}");
    let first = json[0].as_array().unwrap();
    let texts: Vec<&str> = first.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["[CLS]", "Hello", "world", "[SEP]"],
        "the text each token covers"
    );
    assert_eq!(first[0]["special"], true);
    assert_eq!(first[0]["start"], Value::Null);
    assert_eq!(
        (first[1]["start"].as_u64(), first[1]["stop"].as_u64()),
        (Some(0), Some(5))
    );
    assert_eq!(first[2]["id"], 2088, "bert-base-uncased's id of `world`");
    let (_, plain) = server.post_json(
        "/tokenize",
        &json!({"inputs": "Hello world", "add_special_tokens": false}),
    );
    assert_eq!(plain[0].as_array().unwrap().len(), 2);

    // /decode gives back the text of the ids /tokenize gave, as the tokenizer decodes it.
    let ids: Vec<u64> = first.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    let (status, texts) = server.post_json("/decode", &json!({"ids": ids}));
    assert_eq!((status, texts), (200, json!(["hello world"])));
    let (status, texts) = server.post_json(
        "/decode",
        &json!({"ids": [ids, [2088]], "skip_special_tokens": false}),
    );
    assert_eq!(
        (status, texts),
        (200, json!(["[CLS] hello world [SEP]", "world"]))
    );
    let (status, json) = server.post_json("/decode", &json!({"ids": [101, 999_999]}));
    assert_eq!(status, 400, "{json}");
    assert_eq!(json["error_type"], "validation");
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("outside the vocabulary")
    );
    let (status, json) = server.post_json("/decode", &json!({"ids": []}));
    assert_eq!((status, &json["error_type"]), (400, &json!("empty")));
}

#[test]
fn similarity_is_the_cosine_of_the_reference_vectors_on_both_routes() {
    let server = Server::start(&[
        "--models-dir",
        &models_root_arg(),
        "--default-model",
        MINILM,
    ]);
    let cases = reference(MINILM).cases;
    let (source, others) = cases.split_first().unwrap();
    let sentences: Vec<&str> = others.iter().map(|c| c.input.as_str()).collect();
    let inputs = json!({"source_sentence": source.input, "sentences": sentences});
    for route in ["/similarity", "/"] {
        let (status, json) = server.post_json(route, &json!({"inputs": inputs}));
        assert_eq!(status, 200, "{route}: {json}");
        let scores = json.as_array().unwrap();
        assert_eq!(scores.len(), others.len());
        for (score, other) in scores.iter().zip(others) {
            let want = cosine(&source.embedding, &other.embedding);
            assert!(
                (score.as_f64().unwrap() - want).abs() <= 1e-5,
                "{route} {:?}",
                other.input
            );
        }
    }
    let empty = json!({"inputs": {"source_sentence": "a", "sentences": []}});
    let (status, json) = server.post_json("/similarity", &empty);
    assert_eq!(
        (status, json["error_type"].as_str()),
        (400, Some("empty")),
        "{json}"
    );
    let wrong = json!({"inputs": {"source_sentence": "a"}});
    let (status, json) = server.post_json("/", &wrong);
    assert_eq!(status, 400, "{json}");
    assert!(
        json["error"].as_str().unwrap().contains("sentences"),
        "{json}"
    );
}

/// `/embed_all` gives every token's vector: for a mean-pooling model their mean is the
/// embedding's direction; each input keeps its own length in a batch; a model whose graph
/// pools itself has no token vectors to give; an answer too large is refused before it runs.
#[test]
fn embed_all_gives_the_token_vectors_the_embedding_pools() {
    let root = models_root_arg();
    let server = Server::start(&["--models-dir", &root, "--default-model", MINILM]);
    let texts = [
        "Hello world",
        "A longer sentence with a few more words in it",
    ];
    let (status, all) = server.post_json("/embed_all", &json!({"inputs": texts}));
    assert_eq!(status, 200, "{all}");
    let embedded = server.embed(MINILM, json!(texts), json!({}));
    let (_, tokenized) = server.post_json("/tokenize", &json!({"inputs": texts}));
    for ((tokens, vector), ids) in all
        .as_array()
        .unwrap()
        .iter()
        .zip(&embedded)
        .zip(tokenized.as_array().unwrap())
    {
        let tokens = vectors(tokens);
        assert_eq!(
            tokens.len(),
            ids.as_array().unwrap().len(),
            "one vector per token"
        );
        assert!(tokens.iter().all(|t| t.len() == 384));
        let mean: Vec<f32> = (0..384)
            .map(|j| tokens.iter().map(|t| t[j]).sum::<f32>() / tokens.len() as f32)
            .collect();
        assert!(common::cosine(&mean, vector) >= 0.99999);
    }

    // Token and pooled requests at once share runs: each still gets its own answer.
    std::thread::scope(|scope| {
        for client in 0..6 {
            let (server, embedded, texts) = (&server, &embedded, &texts);
            scope.spawn(move || {
                for round in 0..8 {
                    let i = (client + round) % 2;
                    if (client + round) % 3 == 0 {
                        let (status, all) =
                            server.post_json("/embed_all", &json!({"inputs": texts[i]}));
                        assert_eq!(status, 200, "{all}");
                        let tokens = vectors(&all[0]);
                        assert!(tokens.len() > 2 && tokens.iter().all(|t| t.len() == 384));
                    } else {
                        let got = server.embed(MINILM, json!(texts[i]), json!({}));
                        assert!(common::cosine(&got[0], &embedded[i]) >= 0.99999);
                    }
                }
            });
        }
    });

    let pooled_in_graph = "zoo-st5/bert-dense-optimum-st";
    let (status, json) = server.post_json(
        "/embed_all",
        &json!({"model": pooled_in_graph, "inputs": "x"}),
    );
    assert_eq!(
        (status, &json["error_type"]),
        (400, &json!("validation")),
        "{json}"
    );
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("no token embeddings"),
        "{json}"
    );

    let long = "word ".repeat(300);
    let many: Vec<&str> = std::iter::repeat_n(long.as_str(), 200).collect();
    let (status, json) = server.post_json("/embed_all", &json!({"inputs": many}));
    assert_eq!(status, 400, "{json}");
    assert!(json["error"].as_str().unwrap().contains("floats"), "{json}");
}
