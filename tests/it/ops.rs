//! What an operator relies on: health and readiness, metrics that move, API keys, request
//! ids, compression, CORS, timeouts, JSON logs and graceful shutdown.

use crate::common;

use common::fake_hub::{REPO, start_gated_hub};
use common::{Server, assert_error, config_file, metric_in, model_dir, models_root_arg};
use serde_json::json;

#[test]
fn readiness_waits_for_preloads() {
    let (endpoint, hub) = start_gated_hub(false);
    let home = tempfile::tempdir().unwrap();
    let server = Server::start_listening(
        &["--model", REPO],
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    let (status, json) = server.get("/health");
    assert_eq!((status, &json["status"]), (200, &json!("ok")));
    // The preload's download is held open: not ready, and the reason says why.
    let (status, json) = server.get("/ready");
    assert_eq!(status, 503, "{json}");
    assert!(json["reason"].as_str().unwrap().contains(REPO), "{json}");
    hub.gate.add_permits(1);
    server.wait_until_ready();
    let (status, json) = server.get("/ready");
    assert_eq!((status, &json["status"]), (200, &json!("ready")));
}

fn metrics_page(server: &Server) -> String {
    let response = reqwest::blocking::get(server.url("/metrics")).unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().unwrap()
}

#[test]
fn metrics_move_with_requests() {
    let server = Server::start(&["--models-dir", &models_root_arg()]);
    // A graph model, and a static one that computes without the batcher.
    let models = ["tiny/bert-mean", "zoo/static-embedding"];
    for model in models {
        server.embed(model, json!("load it"), json!({}));
    }
    let before = metrics_page(&server);
    let mut tokens = [0, 0];
    for input in [json!(["Hello", "a"]), json!("Hello")] {
        for (model, tokens) in models.iter().zip(&mut tokens) {
            let (status, json) =
                server.post_json("/v1/embeddings", &json!({"model": model, "input": input}));
            assert_eq!(status, 200);
            *tokens += json["usage"]["prompt_tokens"].as_u64().unwrap();
        }
    }
    let (status, _) =
        server.post_json("/v1/embeddings", &json!({"model": "no/such", "input": "x"}));
    assert_eq!(status, 404);
    let after = metrics_page(&server);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric_in(&after, name, labels) - metric_in(&before, name, labels)
    };
    let requests = "embedserve_requests_total";
    let route = ("route", "/v1/embeddings");
    let ok = [("model", "tiny/bert-mean"), route, ("status", "200")];
    assert_eq!(delta(requests, &ok), 2.0, "{after}");
    let missing = [("model", ""), route, ("status", "404")];
    assert_eq!(delta(requests, &missing), 1.0, "{after}");
    for (model, tokens) in models.iter().zip(tokens) {
        let labels = [("model", *model)];
        assert_eq!(
            delta("embedserve_tokens_total", &labels),
            tokens as f64,
            "{after}"
        );
    }
    assert_eq!(delta("embedserve_cache_hits_total", &[]), 4.0);
    assert_eq!(
        delta("embedserve_cache_misses_total", &[]),
        1.0,
        "the unknown model"
    );
    let graph = [("model", "tiny/bert-mean")];
    let table = [("model", "zoo/static-embedding")];
    assert!(
        delta("embedserve_batch_size_count", &graph) >= 2.0,
        "{after}"
    );
    let inference = "embedserve_inference_duration_seconds_count";
    assert!(delta(inference, &graph) >= 2.0);
    assert_eq!(delta(inference, &table), 2.0);
    let latency = "embedserve_request_duration_seconds_count";
    assert!(delta(latency, &[route]) >= 3.0);
    assert_eq!(delta(latency, &[route, ("model", "tiny/bert-mean")]), 2.0);
    let loaded_ok = [("model", "tiny/bert-mean"), ("result", "ok")];
    assert_eq!(
        metric_in(&after, "embedserve_model_loads_total", &loaded_ok),
        1.0
    );
    assert_eq!(metric_in(&after, "embedserve_models_loaded", &[]), 2.0);
    assert_eq!(metric_in(&after, "embedserve_queue_depth", &graph), 0.0);
}

#[test]
fn keys_from_a_file_and_protected_metrics() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keys"), "# team keys\nsk-file\n").unwrap();
    let (_config_dir, config) = config_file(&format!(
        "[server]\napi_key_file = {:?}\nprotect_metrics = true\n",
        dir.path().join("keys").to_str().unwrap()
    ));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let client = reqwest::blocking::Client::new();
    assert_eq!(
        client.get(server.url("/metrics")).send().unwrap().status(),
        401
    );
    let authorized = client
        .get(server.url("/metrics"))
        .bearer_auth("sk-file")
        .send()
        .unwrap();
    assert_eq!(authorized.status(), 200);
    assert_eq!(server.get("/health").0, 200);
}

/// Off by default: clients ask for compression by habit, and vectors cost more CPU to
/// compress than a LAN saves. No CORS origins by default either.
#[test]
fn responses_are_neither_compressed_nor_cors_enabled_unless_configured() {
    let server = Server::start(&["--models-dir", &models_root_arg()]);
    let response = reqwest::blocking::Client::new()
        .post(server.url("/v1/embeddings"))
        .header("accept-encoding", "gzip, deflate, zstd")
        .json(&json!({"model": "tiny/bert-mean", "input": vec!["compress me"; 20]}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!response.headers().contains_key("content-encoding"));
    // Nor any CORS header (the layer is left out without origins).
    assert!(!response.headers().contains_key("vary"));
    let body: serde_json::Value = response.json().unwrap();
    assert_eq!(body["data"].as_array().unwrap().len(), 20);
    let preflight = reqwest::blocking::Client::new()
        .request(reqwest::Method::OPTIONS, server.url("/v1/embeddings"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert!(
        !preflight
            .headers()
            .keys()
            .any(|name| name.as_str().starts_with("access-control-")),
        "{:?}",
        preflight.headers()
    );
}

#[test]
fn request_ids_compression_and_cors() {
    let (_dir, config) = config_file(
        "[server]\ncors_origins = [\"https://app.example\"]\ncompress_responses = true\n",
    );
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--models-dir",
        &models_root_arg(),
    ]);
    let client = reqwest::blocking::Client::new();
    let body = json!({"model": "tiny/bert-mean", "input": vec!["compress me"; 20]});
    let plain = client
        .post(server.url("/v1/embeddings"))
        .json(&body)
        .send()
        .unwrap();
    assert!(
        plain.headers().contains_key("x-request-id"),
        "a request id is made"
    );
    assert!(!plain.headers().contains_key("content-encoding"));
    let given = client
        .post(server.url("/v1/embeddings"))
        .header("x-request-id", "trace-42")
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(
        given.headers()["x-request-id"],
        "trace-42",
        "a given id is kept"
    );
    for encoding in ["gzip", "deflate", "zstd"] {
        let response = client
            .post(server.url("/v1/embeddings"))
            .header("accept-encoding", encoding)
            .json(&body)
            .send()
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-encoding"], encoding);
    }
    let preflight = client
        .request(reqwest::Method::OPTIONS, server.url("/v1/embeddings"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = client
        .request(reqwest::Method::OPTIONS, server.url("/v1/embeddings"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

#[test]
fn a_request_past_the_timeout_gets_408() {
    let (_dir, config) = config_file("[server]\nrequest_timeout = \"200ms\"\n");
    let minilm = model_dir("sentence-transformers/all-MiniLM-L6-v2");
    let spec = format!("minilm={}", minilm.to_str().unwrap());
    let server = Server::start(&["--config", config.to_str().unwrap(), "--model", &spec]);
    let long = "many words ".repeat(300);
    let (status, json) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "minilm", "input": vec![long; 128]}),
    );
    let message = assert_error(status, &json, 408, Some("timeout"));
    assert!(message.contains("200ms"), "{message}");
    // The run the timed-out request started (up to 32 inputs of 256 tokens) cannot be
    // stopped, and a request behind it may time out too; once it ends, the server serves.
    let quick = json!({"model": "minilm", "input": "quick"});
    let served = (0..50).any(|_| match server.post_json("/v1/embeddings", &quick) {
        (200, _) => true,
        (408, _) => false,
        (status, json) => panic!("{status}: {json}"),
    });
    assert!(served, "no request was served after the timeout");
}

#[test]
fn json_logs() {
    let server = Server::start_with_env(
        &["--models-dir", &models_root_arg()],
        &[("EMBEDSERVE_LOG_FORMAT", "json")],
    );
    server.embed("tiny/bert-mean", json!("Hello"), json!({}));
    // The model is a field of its lines (the log is read on another thread: wait for it).
    server.wait_for_log(|line| line.contains(r#""model":"tiny/bert-mean""#));
    let logs = server.logs();
    for line in logs.lines() {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(
            parsed["level"].is_string() && parsed["fields"].is_object(),
            "{line}"
        );
    }
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_cleanly() {
    let minilm = model_dir("sentence-transformers/all-MiniLM-L6-v2");
    let spec = format!("minilm={}", minilm.to_str().unwrap());
    let mut server = Server::start(&["--model", &spec, "--drain-delay", "0s"]);
    let probe_runs = server.metric("embedserve_batch_size_count", &[("model", "minilm")]);
    let url = server.url("/v1/embeddings");
    let long = "many words ".repeat(300);
    let in_flight = std::thread::spawn(move || {
        let response = reqwest::blocking::Client::new()
            .post(url)
            .json(&json!({"model": "minilm", "input": vec![long; 64]}))
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().unwrap(),
        )
    });
    let runs = [("model", "minilm")];
    server.wait_for_metric("embedserve_batch_size_count", &runs, probe_runs + 1.0);
    let exit = server.terminate();
    let (status, json) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["data"].as_array().unwrap().len(), 64);
    assert!(exit.success(), "{exit:?}\n{}", server.logs());
}

#[test]
fn shutdown_stops_waiting_at_its_deadline() {
    let (_dir, config) = config_file("[server]\nshutdown_timeout = \"300ms\"\n");
    let minilm = model_dir("sentence-transformers/all-MiniLM-L6-v2");
    let spec = format!("minilm={}", minilm.to_str().unwrap());
    let mut server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--model",
        &spec,
        "--drain-delay",
        "0s",
    ]);
    let probe_runs = server.metric("embedserve_batch_size_count", &[("model", "minilm")]);
    let url = server.url("/v1/embeddings");
    let long = "many words ".repeat(300);
    let in_flight = std::thread::spawn(move || {
        reqwest::blocking::Client::new()
            .post(url)
            .json(&json!({"model": "minilm", "input": vec![long; 256]}))
            .send()
    });
    let runs = [("model", "minilm")];
    server.wait_for_metric("embedserve_batch_size_count", &runs, probe_runs + 1.0);
    let exit = server.terminate();
    assert!(exit.success(), "{exit:?}\n{}", server.logs());
    assert!(
        in_flight.join().unwrap().is_err(),
        "the unfinished request was cut off"
    );
}

#[test]
fn an_explicit_cuda_model_fails_with_the_reason_while_cpu_models_serve() {
    let (_dir, config) = config_file(&format!(
        "models_dirs = [{:?}]\n[[models]]\nname = \"on-gpu\"\nsource = {:?}\ndevice = \"cuda\"\n",
        models_root_arg(),
        model_dir("tiny/bert-mean").to_str().unwrap()
    ));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let (status, json) =
        server.post_json("/v1/embeddings", &json!({"model": "on-gpu", "input": "x"}));
    let message = assert_error(status, &json, 500, Some("model_load_failed"));
    assert!(
        message.contains("on-gpu") && message.contains("cuda:0") && message.contains("CUDA"),
        "{message}"
    );
    assert_eq!(
        server
            .embed("tiny/bert-cls", json!("Hello"), json!({}))
            .len(),
        1
    );
}

#[test]
fn auto_falls_back_to_the_cpu_and_reports_the_device() {
    let server = Server::start(&["--models-dir", &models_root_arg(), "--device", "auto"]);
    let reference = common::reference("tiny/bert-mean");
    let got = server.embed("tiny/bert-mean", json!(reference.cases[0].input), json!({}));
    assert!(common::cosine(&got[0], &reference.cases[0].embedding) >= 0.99999);
    let on = |device| {
        let labels = [("model", "tiny/bert-mean"), ("device", device)];
        server.metric("embedserve_model_device", &labels)
    };
    assert_eq!((on("cpu"), on("cuda:0")), (1.0, 0.0));
}

/// ONNX Runtime's own telemetry looks up mobile.events.data.microsoft.com about 9 s after
/// the library loads, then every minute or so, unless the server turns it off. Watched
/// under strace for 15 s idle and 15 s serving, the server connects to nothing but
/// loopback and local sockets.
#[test]
fn no_outbound_connection_idle_or_serving() {
    let scratch = tempfile::tempdir().unwrap();
    let trace = scratch.path().join("connect.log");
    let trace_arg = trace.to_str().unwrap();
    let wrapper = ["strace", "-f", "-q", "-e", "trace=connect", "-o", trace_arg];
    let mut server = Server::start_under(
        &wrapper,
        &[
            "--models-dir",
            &models_root_arg(),
            "--model",
            "tiny/bert-mean",
        ],
    );
    let window = std::time::Duration::from_secs(15);
    // Idle: the telemetry would look up its collector within this window.
    let idle_until = std::time::Instant::now() + window;
    while std::time::Instant::now() < idle_until {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let serving_until = std::time::Instant::now() + window;
    while std::time::Instant::now() < serving_until {
        server.embed("tiny/bert-mean", json!(["Hello", "world"]), json!({}));
    }
    assert!(server.terminate().success());
    let connects = std::fs::read_to_string(&trace).expect("strace output");
    assert!(
        connects.contains("+++ exited with 0 +++"),
        "strace did not follow the server to its exit: {connects}"
    );
    let outbound: Vec<&str> = connects
        .lines()
        .filter(|l| l.contains("connect(") && !l.contains("AF_UNIX"))
        .filter(|l| !l.contains("inet_addr(\"127.0.0.1\")") && !l.contains("::1"))
        .collect();
    assert!(outbound.is_empty(), "outbound connections: {outbound:#?}");
}
