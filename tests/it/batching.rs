//! The per-model micro-batcher over real HTTP: concurrent requests share runs, order is kept
//! across runs, cancelled inputs never run, a full queue answers 429, and vectors do not
//! depend on what else is in flight.

use crate::common;

use std::io::Write;
use std::sync::{Arc, Barrier};

use common::{Server, assert_error, config_file, cosine, model_dir, reference};
use serde_json::json;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Inference runs of `model` so far.
fn runs(server: &Server, model: &str) -> f64 {
    server.metric("embedserve_batch_size_count", &[("model", model)])
}

/// Runs of `model` whose `histogram` value was at most `le`.
fn runs_at_most(server: &Server, histogram: &str, model: &str, le: &str) -> f64 {
    server.metric(
        &format!("embedserve_{histogram}_bucket"),
        &[("model", model), ("le", le)],
    )
}

/// Runs of `model` that held inputs of more than one request.
fn shared_runs(server: &Server, model: &str) -> f64 {
    server.metric("embedserve_batch_requests_count", &[("model", model)])
        - runs_at_most(server, "batch_requests", model, "1")
}

fn long_input() -> String {
    let reference = reference(MINILM);
    reference
        .cases
        .iter()
        .max_by_key(|c| c.input.len())
        .unwrap()
        .input
        .clone()
}

fn minilm_server(extra: &[&str]) -> Arc<Server> {
    let dir = model_dir(MINILM);
    let spec = format!("{MINILM}={}", dir.to_str().unwrap());
    let mut args = vec!["--model", spec.as_str()];
    args.extend_from_slice(extra);
    Arc::new(Server::start(&args))
}

/// Starts a request of `count` long inputs on another thread and returns once its first
/// batch is running.
fn keep_busy(server: &Arc<Server>, count: usize) -> std::thread::JoinHandle<Vec<Vec<f32>>> {
    let before = runs(server, MINILM);
    let busy = {
        let server = server.clone();
        let inputs = vec![long_input(); count];
        std::thread::spawn(move || server.embed(MINILM, json!(inputs), json!({})))
    };
    server.wait_for_metric(
        "embedserve_batch_size_count",
        &[("model", MINILM)],
        before + 1.0,
    );
    busy
}

#[test]
fn concurrent_requests_share_a_run() {
    let server = minilm_server(&[]);
    let texts: Vec<String> = (0..8)
        .map(|i| format!("short sentence number {i}"))
        .collect();
    let alone: Vec<Vec<f32>> = texts
        .iter()
        .map(|t| server.embed(MINILM, json!(t), json!({})).remove(0))
        .collect();
    assert_eq!(shared_runs(&server, MINILM), 0.0, "one request at a time");

    let busy = keep_busy(&server, 64);
    let start = Arc::new(Barrier::new(texts.len()));
    let clients: Vec<_> = texts
        .iter()
        .map(|text| {
            let (server, start, text) = (server.clone(), start.clone(), text.clone());
            std::thread::spawn(move || {
                start.wait();
                server.embed(MINILM, json!(text), json!({})).remove(0)
            })
        })
        .collect();
    for (client, want) in clients.into_iter().zip(&alone) {
        assert!(cosine(&client.join().unwrap(), want) >= 0.999999);
    }
    busy.join().unwrap();
    assert!(
        shared_runs(&server, MINILM) > 0.0,
        "no run held inputs of several requests"
    );
}

#[test]
fn a_request_split_over_many_runs_keeps_its_order() {
    let server = Server::start(&["--models-dir", common::models_root().to_str().unwrap()]);
    let model = "tiny/bert-mean";
    let inputs: Vec<String> = (0..300)
        .map(|i| format!("input {i}: {}", "word ".repeat(i % 37)))
        .collect();
    let together = server.embed(model, json!(inputs), json!({}));
    // One run was the load's probe.
    let runs = runs(&server, model) - 1.0;
    assert!(runs >= 10.0, "300 inputs in only {runs} runs");
    for (input, vector) in inputs.iter().zip(&together) {
        let alone = server.embed(model, json!(input), json!({})).remove(0);
        assert!(cosine(&alone, vector) >= 0.999999, "{input}");
    }
}

#[test]
fn a_cancelled_request_does_not_run() {
    let server = minilm_server(&[]);
    let before = runs(&server, MINILM);
    let rows_before = server.metric("embedserve_batch_size_sum", &[("model", MINILM)]);
    let body = json!({"model": MINILM, "input": vec![long_input(); 200]}).to_string();
    let address = server.base.trim_start_matches("http://").to_string();
    let mut client = std::net::TcpStream::connect(&address).unwrap();
    write!(
        client,
        "POST /v1/embeddings HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Its first batch runs; then the client hangs up.
    server.wait_for_metric(
        "embedserve_batch_size_count",
        &[("model", MINILM)],
        before + 1.0,
    );
    drop(client);
    let model = [("model", MINILM)];
    server.wait_for_metric("embedserve_cancelled_inputs_total", &model, 1.0);
    // A later request is served, and the cancelled one ran far fewer than its 200 inputs.
    server.embed(MINILM, json!("after"), json!({}));
    let rows = server.metric("embedserve_batch_size_sum", &model) - rows_before - 1.0;
    let cancelled = server.metric("embedserve_cancelled_inputs_total", &model);
    assert!(rows < 200.0, "{rows} inputs of the cancelled request ran");
    assert_eq!(
        rows + cancelled,
        200.0,
        "every input either ran or was withdrawn"
    );
}

#[test]
fn a_full_queue_answers_429_at_once() {
    let server = minilm_server(&["--max-queued-inputs", "40"]);
    let busy = keep_busy(&server, 64);
    // At least 32 inputs wait behind the running batch (fewer rows per run for inputs this
    // long when the measured run shapes say so): 10 more do not fit.
    let (status, body) = server.post_json(
        "/v1/embeddings",
        &json!({"model": MINILM, "input": vec!["x"; 10]}),
    );
    let message = assert_error(status, &body, 429, Some("queue_full"));
    assert!(message.contains("max_queued_inputs is 40"), "{message}");
    let response = reqwest::blocking::Client::new()
        .post(server.url("/v1/embeddings"))
        .json(&json!({"model": MINILM, "input": vec!["x"; 10]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    // Once 32 or fewer wait, 8 more fit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server.metric("embedserve_queue_depth", &[("model", MINILM)]) > 32.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never drained"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let fits = server.embed(MINILM, json!(vec!["x"; 8]), json!({}));
    assert_eq!(fits.len(), 8);
    assert_eq!(busy.join().unwrap().len(), 64);
}

/// Embeds every reference case alone, then from 8 clients at once in shuffled mixes, and
/// checks that no vector moved.
fn assert_stable_under_load(server: Arc<Server>, model: &'static str) {
    let cases: Vec<String> = reference(MINILM)
        .cases
        .iter()
        .map(|c| c.input.clone())
        .collect();
    let alone: Vec<Vec<f32>> = cases
        .iter()
        .map(|c| server.embed(model, json!(c), json!({})).remove(0))
        .collect();
    let start = Arc::new(Barrier::new(8));
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let (server, start, cases, alone) =
                (server.clone(), start.clone(), cases.clone(), alone.clone());
            std::thread::spawn(move || {
                start.wait();
                for round in 0..3 {
                    let picks: Vec<usize> = (0..5)
                        .map(|k| (client * 7 + round * 3 + k * 5) % cases.len())
                        .collect();
                    let inputs: Vec<&str> = picks.iter().map(|&i| cases[i].as_str()).collect();
                    let got = server.embed(model, json!(inputs), json!({}));
                    for (&i, vector) in picks.iter().zip(&got) {
                        let c = cosine(vector, &alone[i]);
                        assert!(
                            c >= 0.999999,
                            "{model}: case {i} moved under load: cosine {c}"
                        );
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
}

#[test]
fn fp32_vectors_do_not_depend_on_batch_mates() {
    let server = minilm_server(&[]);
    assert_stable_under_load(server.clone(), MINILM);
    let up_to_four = runs_at_most(&server, "batch_size", MINILM, "4");
    assert!(
        runs(&server, MINILM) > up_to_four,
        "load produced runs of more than 4 inputs"
    );
}

#[test]
fn an_isolated_int8_model_gives_identical_vectors_under_load() {
    let (_dir, config) = config_file(&format!(
        "[[models]]\nname = \"int8\"\nsource = {:?}\nonnx_file = \"onnx/model_qint8.onnx\"\npreload = true\n",
        model_dir(MINILM).to_str().unwrap()
    ));
    let server = Arc::new(Server::start(&["--config", config.to_str().unwrap()]));
    assert_stable_under_load(server.clone(), "int8");
    let runs = runs(&server, "int8");
    assert!(runs > 100.0, "{runs} runs");
    assert_eq!(
        runs_at_most(&server, "batch_size", "int8", "1"),
        runs,
        "every run held one input"
    );
}
