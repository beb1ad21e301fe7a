//! int8 and uint8 vectors: byte codes against fixed per-model ranges, so that a text's codes
//! never depend on what else its request holds; the ranges from the folder's
//! `int8_ranges.json`, else from the model's vectors of the built-in calibration set, and
//! reported by `/v1/models/{id}`. (Binary vectors are checked on every fixture in
//! `reference.rs`.)

use crate::common;

use common::{Server, model_dir};
use serde_json::{Value, json};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const TEXTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello",
    "",
    "A longer sentence, so that the batch pads the others to its length and beyond it.",
];

fn codes(server: &Server, model: &str, input: Value, extra: Value) -> Vec<Vec<f32>> {
    let mut body = json!({"model": model, "input": input});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, json) = server.post_json("/v1/embeddings", &body);
    assert_eq!(status, 200, "{json}");
    common::vectors(&json)
}

/// sentence-transformers' `quantize_embeddings(precision="int8", ranges=...)` in f32, as
/// numpy computes it; where a value lies outside its range the code saturates (numpy's cast
/// would wrap it around to the other end).
fn st_int8(vector: &[f32], min: &[f32], max: &[f32]) -> Vec<f32> {
    let steps = vector.iter().zip(min.iter().zip(max));
    steps
        .map(|(x, (lo, hi))| ((x - lo) / ((hi - lo) / 255.0) - 128.0).trunc())
        .map(|code| code.clamp(-128.0, 127.0))
        .collect()
}

fn reported_ranges(server: &Server, model: &str) -> (String, Vec<f32>, Vec<f32>) {
    let (status, object) = server.get(&format!("/v1/models/{model}"));
    assert_eq!(status, 200, "{object}");
    let ranges = &object["int8_ranges"];
    let floats = |key: &str| -> Vec<f32> {
        let values = ranges[key].as_array().unwrap_or_else(|| panic!("{object}"));
        values.iter().map(|v| v.as_f64().unwrap() as f32).collect()
    };
    let source = ranges["source"].as_str().unwrap().to_string();
    (source, floats("min"), floats("max"))
}

#[test]
fn int8_codes_never_depend_on_the_batch_and_count_the_calibration_sets_ranges() {
    let server = Server::start(&[
        "--models-dir",
        &common::models_root_arg(),
        "--model",
        MINILM,
    ]);
    let (_, before) = server.get(&format!("/v1/models/{MINILM}"));
    assert!(
        before.get("int8_ranges").is_none(),
        "computed before any request needed them"
    );
    for extra in [
        json!({"encoding_format": "int8"}),
        json!({"output_dtype": "uint8", "dimensions": 64}),
    ] {
        let alone: Vec<Vec<f32>> = TEXTS
            .iter()
            .map(|text| codes(&server, MINILM, json!(text), extra.clone()).remove(0))
            .collect();
        let batched = codes(&server, MINILM, json!(TEXTS), extra.clone());
        assert_eq!(alone, batched, "{extra}");
        let reversed: Vec<&str> = TEXTS.iter().rev().copied().collect();
        let mut again = codes(&server, MINILM, json!(reversed), extra.clone());
        again.reverse();
        assert_eq!(alone, again, "{extra}");
    }

    let (source, min, max) = reported_ranges(&server, MINILM);
    assert_eq!(source, "calibration_set");
    // The ranges are the model's own vectors of the calibration set, whatever the batches.
    let calibration = include_str!("../../src/model/int8-calibration.txt");
    let texts: Vec<&str> = calibration.lines().collect();
    assert_eq!(texts.len(), 1000);
    let mut lowest = vec![f32::INFINITY; 384];
    let mut highest = vec![f32::NEG_INFINITY; 384];
    for chunk in texts.chunks(100) {
        for vector in server.embed(MINILM, json!(chunk), json!({})) {
            for (i, x) in vector.into_iter().enumerate() {
                lowest[i] = lowest[i].min(x);
                highest[i] = highest[i].max(x);
            }
        }
    }
    let near = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(
        near(&min, &lowest) && near(&max, &highest),
        "{min:?}\n{lowest:?}"
    );

    let floats = server.embed(MINILM, json!(TEXTS), json!({}));
    let int8 = codes(
        &server,
        MINILM,
        json!(TEXTS),
        json!({"output_dtype": "int8"}),
    );
    for (vector, got) in floats.iter().zip(&int8) {
        assert_eq!(got, &st_int8(vector, &min, &max));
    }
}

#[test]
fn a_folders_int8_ranges_file_gives_the_codes() {
    // MiniLM's files, linked, with ranges of its own: 0.1 either side of zero, wider below.
    let folder = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(MINILM)).unwrap().flatten() {
        std::os::unix::fs::symlink(entry.path(), folder.path().join(entry.file_name())).unwrap();
    }
    let (min, max) = (vec![-0.2f32; 384], vec![0.1f32; 384]);
    let file = json!({"min": min, "max": max}).to_string();
    std::fs::write(folder.path().join("int8_ranges.json"), file).unwrap();
    let model = format!("minilm-ranged={}", folder.path().display());
    let server = Server::start(&["--model", &model]);

    let floats = server.embed("minilm-ranged", json!(TEXTS), json!({}));
    let int8 = codes(
        &server,
        "minilm-ranged",
        json!(TEXTS),
        json!({"encoding_format": "int8"}),
    );
    for (vector, got) in floats.iter().zip(&int8) {
        assert_eq!(got, &st_int8(vector, &min, &max));
    }
    assert_eq!(
        reported_ranges(&server, "minilm-ranged"),
        ("file".into(), min, max)
    );
}

/// The calibration runs once, even when the request that started it hangs up midway: the
/// next int8 request waits for the same run instead of starting the thousand texts over.
#[test]
fn a_client_that_hangs_up_does_not_restart_the_calibration() {
    use std::io::Write;
    let server = Server::start(&[
        "--models-dir",
        &common::models_root_arg(),
        "--model",
        MINILM,
    ]);
    let rows = || server.metric("embedserve_batch_size_sum", &[("model", MINILM)]);
    let body = json!({"model": MINILM, "input": "hello", "encoding_format": "int8"}).to_string();
    let address = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "POST /v1/embeddings HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Hang up once the calibration is under way.
    server.wait_for_metric("embedserve_batch_size_sum", &[("model", MINILM)], 100.0);
    drop(stream);
    let int8 = codes(
        &server,
        MINILM,
        json!("hello"),
        json!({"encoding_format": "int8"}),
    );
    assert_eq!(int8[0].len(), 384);
    let run = rows();
    assert!(
        (1000.0..1100.0).contains(&run),
        "{run} inputs ran: the calibration's 1,000 texts once, and the two requests'"
    );
}
