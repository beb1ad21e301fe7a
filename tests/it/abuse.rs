//! Hostile and careless clients: what one request may cost, connections that never finish,
//! loads abandoned by their requesters, and shutdown under load. Each test reproduces an
//! attack that once exhausted the server.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, assert_error, cosine, models_root_arg};
use serde_json::json;

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const MIB: u64 = 1024 * 1024;

fn server(extra: &[&str]) -> Server {
    let root = models_root_arg();
    let mut args = vec!["--models-dir", root.as_str()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A long text costs what is embedded: its first `max_seq_length` tokens, or its last when
/// cut from the start. Tokenizing 4 MiB of `!` whole took 1.6 GB and seconds of CPU; its
/// vector is the one of a text just long enough to be truncated at the same token.
#[test]
fn long_inputs_cost_what_is_embedded_and_keep_their_vectors() {
    let server = server(&[]);
    let endless = "a".repeat(4 << 20);
    let prose = "Antidisestablishmentarianism notwithstanding, the quick brown fox jumps over \
                 the lazy dog again. ";
    let from_the_end = [
        ("punctuation", "!".repeat(4 << 20), "!".repeat(600)),
        ("prose cut mid-word", prose.repeat(40_000), prose.repeat(30)),
        (
            "CJK without spaces",
            "漢字仮名交じり文".repeat(200_000),
            "漢字仮名交じり文".repeat(40),
        ),
        (
            "an endless word, then words",
            format!("{endless} {}", prose.repeat(1_000)),
            format!("{} {}", &endless[..200], prose.repeat(30)),
        ),
    ];
    let from_the_start = [
        ("punctuation", "!".repeat(4 << 20), "!".repeat(600)),
        ("prose", prose.repeat(40_000), prose.repeat(30)),
        (
            "CJK without spaces",
            "漢字仮名交じり文".repeat(200_000),
            "漢字仮名交じり文".repeat(40),
        ),
        (
            "words, then an endless word",
            format!("{} {endless}", prose.repeat(1_000)),
            format!("{} {}", prose.repeat(30), &endless[..200]),
        ),
    ];
    server.embed(MINILM, json!("warm up"), json!({}));
    let before = server.peak_resident_bytes();
    for (direction, cases) in [("Right", from_the_end), ("Left", from_the_start)] {
        let cut = json!({"truncation_direction": direction});
        for (case, long, short) in cases {
            let long_vector = server.embed(MINILM, json!(long), cut.clone());
            let short_vector = server.embed(MINILM, json!(short), cut.clone());
            let similarity = cosine(&long_vector[0], &short_vector[0]);
            assert!(
                similarity >= 0.99999,
                "{case}, {direction}: cosine {similarity}"
            );
            // With truncation off, the refusal comes as fast.
            let (status, body) = server.post_json(
                "/v1/embeddings",
                &json!({"model": MINILM, "input": long, "truncate": false,
                        "truncation_direction": direction}),
            );
            assert_error(status, &body, 400, None);
            assert_eq!(body["error"]["param"], "input", "{case}: {body}");
        }
    }
    let grown = server.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 96 * MIB,
        "eight 4 MiB inputs raised peak memory by {} MiB",
        grown / MIB
    );
}

/// A server with tight bounds: 1 s to send a head, 1 s of keep-alive idling.
fn tight_server() -> (Server, tempfile::TempDir) {
    let (dir, config) = common::config_file(
        "[server]\nheader_read_timeout = \"1s\"\nkeep_alive_timeout = \"1s\"\n",
    );
    (server(&["--config", config.to_str().unwrap()]), dir)
}

fn connect(server: &Server) -> TcpStream {
    let address = server.base.trim_start_matches("http://");
    let stream = TcpStream::connect(address).unwrap();
    // Only a bound on a test gone wrong: the server closes much sooner.
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection; the bytes read.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    match stream.read_to_end(&mut received) {
        Ok(_) => received,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => received,
        Err(e) => panic!("the server kept the connection open: {e}"),
    }
}

/// A connection that sends nothing, or half a head, or its head a byte at a time, or idles
/// after a response, is closed: it no longer holds a descriptor for 400 s and more.
#[test]
fn silent_slow_and_idle_connections_are_closed() {
    let (server, _config) = tight_server();
    let opened = Instant::now();
    let mut silent = connect(&server);
    let mut half = connect(&server);
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(read_until_closed(&mut silent).is_empty());
    assert!(read_until_closed(&mut half).is_empty());

    // One byte every 100 ms does not keep a head alive past the timeout.
    let mut trickle = connect(&server);
    let head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut sent_whole_head = true;
    for byte in head {
        if trickle.write_all(&[*byte]).is_err() {
            sent_whole_head = false;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !sent_whole_head
            || !String::from_utf8_lossy(&read_until_closed(&mut trickle)).contains("200"),
        "a head sent over {:?} was answered",
        opened.elapsed()
    );

    let mut idle = connect(&server);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answered = String::from_utf8_lossy(&read_until_closed(&mut idle)).to_string();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(server.metric("embedserve_connections_timed_out_total", &[]) >= 4.0);
}

/// With every connection slot held, a newcomer takes the slot of the oldest connection that
/// is not computing an answer, which is closed. (Only connections computing an answer keep
/// their slot: `connections::registry`'s unit tests.)
#[test]
fn connections_beyond_the_bound_take_the_slot_of_an_idle_one() {
    let (dir, config) = common::config_file("[server]\nmax_connections = 2\n");
    let server = server(&["--config", config.to_str().unwrap()]);
    let _dir = dir;
    let mut idle: Vec<TcpStream> = (0..2).map(|_| connect(&server)).collect();
    for stream in &mut idle {
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = [0u8; 12];
        stream.read_exact(&mut response).unwrap();
        assert_eq!(&response, b"HTTP/1.1 200");
    }
    // Both slots idle: the newcomer is served, and the oldest idle connection is closed.
    let mut newcomer = connect(&server);
    newcomer
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answered = String::from_utf8_lossy(&read_until_closed(&mut newcomer)).to_string();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    // The rest of its earlier answer, then the end.
    read_until_closed(&mut idle[0]);
    // (The metrics request may shed the other one too.)
    let shed = server.metric(
        "embedserve_connections_refused_total",
        &[("reason", "shed")],
    );
    assert!(shed >= 1.0, "{shed}");
}

fn wait_until_not_ready(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get("/ready").0 != 503 {
        assert!(Instant::now() < deadline, "/ready never said 503");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// On SIGTERM the server keeps serving for the drain delay (5 s by default) with `/ready`
/// at 503, so a load balancer can see it and stop sending, then exits cleanly.
#[test]
fn a_draining_server_says_not_ready_and_still_serves() {
    let mut server = server(&[]);
    server.embed(
        "tiny/bert-mean",
        json!("loaded before the drain"),
        json!({}),
    );
    server.signal("TERM");
    wait_until_not_ready(&server);
    let (status, body) = server.get("/ready");
    assert_eq!(status, 503, "{body}");
    let vectors = server.embed("tiny/bert-mean", json!(["still", "served"]), json!({}));
    assert_eq!(vectors.len(), 2);
    let exit = server.wait_for_exit(Duration::from_secs(60));
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?}\n{}",
        server.logs()
    );
}

/// A second signal stops a draining server at once.
#[test]
fn a_second_signal_stops_at_once() {
    let mut server = server(&["--drain-delay", "10m"]);
    server.signal("TERM");
    wait_until_not_ready(&server);
    server.signal("INT");
    let exit = server.wait_for_exit(Duration::from_secs(20));
    assert!(exit.is_some(), "still running 20 s after the second signal");
}

/// Clients that hold connections without a request in flight (silent, half a head, idle
/// keep-alive) no longer hold shutdown until `shutdown_timeout` (30 s).
#[test]
fn idle_and_slow_clients_do_not_delay_shutdown() {
    let mut server = server(&["--drain-delay", "0s"]);
    let _silent = connect(&server);
    let mut half = connect(&server);
    half.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut idle = connect(&server);
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 12];
    idle.read_exact(&mut answer).unwrap();
    let signalled = Instant::now();
    server.signal("TERM");
    let exit = server.wait_for_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|e| e.success()),
        "{exit:?} {:?} after SIGTERM\n{}",
        signalled.elapsed(),
        server.logs()
    );
}

/// Clients that give up while their model loads do not waste the load: it finishes once and
/// the model is cached (20 such clients once caused 20 full loads).
#[test]
fn a_load_abandoned_by_its_clients_happens_once() {
    let server = server(&[]);
    let impatient = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    for _ in 0..20 {
        let _ = impatient
            .post(server.url("/v1/embeddings"))
            .json(&json!({"model": MINILM, "input": "gone before the model loads"}))
            .send();
    }
    server.embed(MINILM, json!("patient"), json!({}));
    let loads = server.metric("embedserve_model_loads_total", &[("model", MINILM)]);
    assert_eq!(loads, 1.0, "{}", server.logs());
}

/// A 1-input request sent while a large request runs is answered before the large one
/// finishes: batches give each queued request a share (it once waited 83 s behind a
/// 1,100-input request).
#[test]
fn a_small_request_does_not_wait_for_a_large_one() {
    let server = server(&[]);
    server.embed(MINILM, json!("load the model"), json!({}));
    let runs_before = server.metric("embedserve_batch_size_count", &[("model", MINILM)]);
    let url = server.url("/v1/embeddings");
    let long = "many words ".repeat(300);
    let large = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap()
            .post(url)
            .json(&json!({"model": MINILM, "input": vec![long; 128]}))
            .send()
            .map(|r| r.status().as_u16())
    });
    server.wait_for_metric(
        "embedserve_batch_size_count",
        &[("model", MINILM)],
        runs_before + 1.0,
    );
    let sent = Instant::now();
    server.embed(MINILM, json!("a short one"), json!({}));
    let waited = sent.elapsed();
    assert!(
        !large.is_finished(),
        "the small request ({waited:?}) was answered only after the large one"
    );
    assert_eq!(large.join().unwrap().unwrap(), 200);
}

/// With `allow_hub_downloads`, any name is a Hub id to try: names that fail to load add no
/// metric series of their own, and credentials in HF_ENDPOINT never reach a client.
#[test]
fn unknown_hub_ids_mint_no_metric_series_and_leak_no_credentials() {
    let home = tempfile::tempdir().unwrap();
    // Port 9 (discard) refuses: the "mirror" fails fast, with its URL in the error.
    let server = Server::start_with_env(
        &["--allow-hub-downloads"],
        &[
            ("HF_ENDPOINT", "http://mirror-user:s3cret-token@127.0.0.1:9"),
            ("HF_HOME", home.path().to_str().unwrap()),
        ],
    );
    for i in 0..5 {
        let (status, body) = server.post_json(
            "/v1/embeddings",
            &json!({"model": format!("someone/missing-{i}"), "input": "x"}),
        );
        let message = assert_error(status, &body, 500, Some("model_load_failed"));
        assert!(message.contains("127.0.0.1:9"), "{message}");
        assert!(!message.contains("s3cret"), "{message}");
    }
    let page = server.metrics_page();
    assert!(!page.contains("missing-"), "{page}");
    let failed = server.metric(
        "embedserve_model_loads_total",
        &[("model", "(unlisted hub id)"), ("result", "error")],
    );
    assert_eq!(failed, 5.0);
}

/// A models directory holding `org/broken`: tiny/bert-mean with a graph that is not one.
fn models_dir_with_a_broken_model() -> tempfile::TempDir {
    let models = tempfile::tempdir().unwrap();
    let broken = models.path().join("org/broken");
    common::copy_dir(&common::model_dir("tiny/bert-mean"), &broken);
    std::fs::write(broken.join("onnx/model.onnx"), b"not a graph").unwrap();
    models
}

/// Errors tell a client what went wrong without the server's paths, and repeat at most a
/// bounded part of what it sent.
#[test]
fn errors_hide_server_paths_and_bound_what_they_echo() {
    let models = models_dir_with_a_broken_model();
    let server = Server::start(&["--models-dir", models.path().to_str().unwrap()]);

    let (status, body) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "org/broken", "input": "x"}),
    );
    let message = assert_error(status, &body, 500, Some("model_load_failed"));
    assert!(message.contains("onnx/model.onnx"), "{message}");
    let root = models.path().to_str().unwrap();
    assert!(!message.contains(root), "{message}");

    let huge_name = "m".repeat(1 << 20);
    let (status, body) =
        server.post_json("/v1/embeddings", &json!({"model": huge_name, "input": "x"}));
    let message = assert_error(status, &body, 404, Some("model_not_found"));
    assert!(message.len() < 1024, "a {} byte error", message.len());
    let (status, body) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "org/broken", "input": "x", "dimensions": "9".repeat(1 << 20)}),
    );
    let message = assert_error(status, &body, 400, None);
    assert!(message.len() < 1024, "a {} byte error", message.len());

    let (status, body) = server.get("/v1/models/%ff%fe");
    assert_error(status, &body, 400, Some("invalid_path"));
}

/// A body announced larger than the limit is refused before it is sent: no `100 Continue`.
#[test]
fn an_announced_oversized_body_is_refused_before_it_is_sent() {
    let server = server(&["--max-body-bytes", "1000"]);
    let mut stream = connect(&server);
    stream
        .write_all(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 413", "{}", String::from_utf8_lossy(&head));
}

/// A 5xx is logged once, at its cause, and `/ready` answering 503 while models load is not
/// logged as an error.
#[test]
fn failures_are_logged_once_and_loading_is_no_error() {
    let models = models_dir_with_a_broken_model();
    let minilm = common::model_dir(MINILM);
    let spec = format!("minilm={}", minilm.to_str().unwrap());
    let server = Server::start_listening(
        &[
            "--models-dir",
            models.path().to_str().unwrap(),
            "--model",
            &spec,
            "--log-format",
            "json",
        ],
        &[],
    );
    let mut answered_503 = false;
    while server.get("/ready").0 == 503 {
        answered_503 = true;
    }
    let (status, _) = server.post_json(
        "/v1/embeddings",
        &json!({"model": "org/broken", "input": "x"}),
    );
    assert_eq!(status, 500);
    // The failure is logged before the 500 is sent, but the log is read from a pipe: a line
    // logged after the answer (the unload's, in the DELETE's span) marks where to stop.
    assert_eq!(server.delete("/admin/models/minilm").0, 200);
    server.wait_for_log(|line| {
        serde_json::from_str::<serde_json::Value>(line)
            .is_ok_and(|record| record["span"]["path"] == "/admin/models/minilm")
    });
    let errors: Vec<String> = server
        .logs()
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|record| record["level"] == "ERROR")
        })
        .map(str::to_string)
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one failed load (and {} /ready 503s): {errors:#?}",
        if answered_503 { "some" } else { "no" }
    );
}

/// An input array over `max_inputs_per_request` is refused while it is read: a 16 MiB body
/// of `""` took 210 MiB when the array was counted only after parsing.
#[test]
fn over_long_input_arrays_are_refused_while_parsing() {
    let server = server(&[]);
    server.get("/health");
    let before = server.peak_resident_bytes();
    let elements = (15 << 20) / 3;
    let mut body = String::with_capacity(16 << 20);
    body.push_str(r#"{"model":"tiny/bert-mean","input":["#);
    for i in 0..elements {
        body.push_str(if i == 0 { r#""""# } else { r#","""# });
    }
    body.push_str("]}");
    let response = reqwest::blocking::Client::new()
        .post(server.url("/v1/embeddings"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    let json: serde_json::Value = response.json().unwrap();
    let message = assert_error(status, &json, 400, None);
    assert!(message.contains("at most 2048"), "{message}");
    let grown = server.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 64 * MIB,
        "a 15 MiB array raised peak memory by {} MiB",
        grown / MIB
    );
}
