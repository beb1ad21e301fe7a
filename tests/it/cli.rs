//! The command line: `embed` without a server, and start-up and load failures that say
//! what is wrong and what to do.

use crate::common;

use common::{
    Server, assert_error, config_file, cosine, model_dir, models_root, reference, run_cli,
};
use serde_json::json;

#[test]
fn embed_prints_one_reference_vector_per_line() {
    let reference = reference("tiny/bert-mean");
    let cases = &reference.cases[..3];
    let root = models_root();
    let mut args = vec![
        "embed",
        "--model",
        "tiny/bert-mean",
        "--models-dir",
        root.to_str().unwrap(),
    ];
    args.extend(cases.iter().map(|c| c.input.as_str()));
    let output = run_cli(&args, &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<Vec<f32>> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len());
    for (line, case) in lines.iter().zip(cases) {
        assert!(cosine(line, &case.embedding) >= 0.99999, "{}", case.input);
    }
}

#[test]
fn a_missing_runtime_names_the_fix() {
    let output = run_cli(
        &["serve", "--port", "0"],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("/nonexistent/libonnxruntime.so"),
        "{stderr}"
    );
    assert!(stderr.contains("scripts/fetch-onnxruntime"), "{stderr}");
}

#[test]
fn a_file_that_is_not_onnx_runtime_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("libonnxruntime.so");
    std::fs::write(&fake, b"not a library").unwrap();
    let output = run_cli(
        &["serve", "--port", "0"],
        &[("ORT_DYLIB_PATH", fake.to_str().unwrap())],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot load ONNX Runtime"), "{stderr}");
}

#[test]
fn invalid_config_fails_at_startup_naming_the_key() {
    for (text, key) in [
        ("[server]\nport = \"eighty\"\n", "port"),
        ("[server]\nhots = \"0.0.0.0\"\n", "hots"),
        (
            "[[models]]\nsource = \"a/b\"\n[[models]]\nsource = \"c/d\"\nname = \"a/b\"\n",
            "models[1].name",
        ),
        ("[runtime]\nintra_threads = 0\n", "runtime.intra_threads"),
        (
            "[[models]]\nsource = \"not a source\"\n",
            "models[0].source",
        ),
    ] {
        let (_dir, path) = config_file(text);
        let output = run_cli(&["serve", "--config", path.to_str().unwrap()], &[]);
        assert!(!output.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(key), "{text}: {stderr}");
    }
    let output = run_cli(&["serve", "--config", "/nonexistent/embedserve.toml"], &[]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("/nonexistent/embedserve.toml"));
}

#[test]
fn a_preloaded_model_that_cannot_load_stops_startup() {
    let log = Server::try_start(&["--model", "/nonexistent/model-dir"], &[])
        .err()
        .expect("must not start");
    assert!(log.contains("/nonexistent/model-dir"), "{log}");
}

/// A models directory holding `broken/bert`: tiny/bert-mean with a corrupt ONNX file.
fn broken_mirror() -> tempfile::TempDir {
    let mirror = tempfile::tempdir().unwrap();
    let broken = mirror.path().join("broken/bert");
    common::copy_dir(&model_dir("tiny/bert-mean"), &broken);
    std::fs::write(broken.join("onnx/model.onnx"), b"this is not a protobuf").unwrap();
    mirror
}

fn assert_broken_fails_and_healthy_serves(server: &Server) {
    let (status, body) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "broken/bert", "input": "x"}),
    );
    let message = assert_error(status, &body, 500, Some("model_load_failed"));
    assert!(
        message.contains("broken/bert") && message.contains("onnx/model.onnx"),
        "{message}"
    );
    let (status, body) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "tiny/bert-mean", "input": "x"}),
    );
    assert_eq!(status, 200, "{body}");
}

fn failed_loads(server: &Server) -> f64 {
    let labels = [("model", "broken/bert"), ("result", "error")];
    server.metric("embedserve_model_loads_total", &labels)
}

#[test]
fn a_corrupt_model_fails_cleanly_and_is_retried_after_the_backoff() {
    let mirror = broken_mirror();
    let (_dir, config) = config_file("[cache]\nload_failure_backoff = \"0s\"\n");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--models-dir",
        mirror.path().to_str().unwrap(),
        "--models-dir",
        models_root().to_str().unwrap(),
    ]);
    for _ in 0..2 {
        assert_broken_fails_and_healthy_serves(&server);
    }
    // Not cached as loaded: with no back-off, each request tried again.
    assert_eq!(failed_loads(&server), 2.0);
    assert!(!server.loaded().contains(&"broken/bert".to_string()));
}

#[test]
fn within_the_backoff_a_failed_load_is_not_repeated() {
    let mirror = broken_mirror();
    let server = Server::start(&[
        "--models-dir",
        mirror.path().to_str().unwrap(),
        "--models-dir",
        models_root().to_str().unwrap(),
    ]);
    for _ in 0..3 {
        assert_broken_fails_and_healthy_serves(&server);
    }
    assert_eq!(failed_loads(&server), 1.0);
}

#[test]
fn aliases_reach_one_loaded_model() {
    let (_dir, path) = config_file(&format!(
        "[[models]]\nname = \"mini\"\nsource = {:?}\naliases = [\"text-embedding-3-small\"]\n",
        model_dir("tiny/bert-mean").to_str().unwrap()
    ));
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    let a = server.embed("mini", json!("Hello"), json!({}));
    let b = server.embed("text-embedding-3-small", json!("Hello"), json!({}));
    assert_eq!(a, b);
    let loads = [("model", "mini"), ("result", "ok")];
    assert_eq!(server.metric("embedserve_model_loads_total", &loads), 1.0);
}

/// `embedserve batch` runs a batch file with no server; killed midway (SIGKILL), the same
/// command resumes it, and the output holds every line once with the reference vector.
#[test]
fn batch_resumes_after_a_kill_and_writes_every_line_once() {
    const LINES: usize = 3000;
    let reference = reference("sentence-transformers/all-MiniLM-L6-v2");
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("requests.jsonl");
    let output = work.path().join("results.jsonl");
    let jsonl: String = (0..LINES)
        .map(|i| {
            let text = &reference.cases[i % reference.cases.len()].input;
            let line = json!({"custom_id": format!("c{i}"), "method": "POST",
                              "url": "/v1/embeddings", "body": {"input": text}});
            format!("{line}\n")
        })
        .collect();
    std::fs::write(&input, jsonl).unwrap();
    // Both runs keep the cores busy: no test that measures the machine runs beside them.
    let _share = common::share();
    let root = models_root();
    let args = [
        "batch",
        "--model",
        "sentence-transformers/all-MiniLM-L6-v2",
        "--models-dir",
        root.to_str().unwrap(),
        input.to_str().unwrap(),
        "-o",
        output.to_str().unwrap(),
    ];
    // Killed once its first results are on disk.
    let mut first = common::binary()
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let results = work.path().join("results.jsonl.progress/work");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !std::fs::read_dir(&results).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 0))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "no results were written"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(!output.exists());

    let resumed = run_cli(&args, &[]);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), LINES);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["custom_id"], format!("c{i}"));
        let vector: Vec<f32> =
            serde_json::from_value(line["response"]["body"]["data"][0]["embedding"].clone())
                .unwrap();
        let case = &reference.cases[i % reference.cases.len()];
        assert!(cosine(&vector, &case.embedding) >= 0.99999, "c{i}");
    }
    assert!(!work.path().join("results.jsonl.progress").exists());
}
