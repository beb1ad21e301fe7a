//! The Batch API survives crashes: a 20,000-line batch runs while the server is killed
//! (SIGKILL) at random moments and started again over the same data directory, again and
//! again; the batch completes, and its output holds every `custom_id` exactly once, with the
//! vector `/v1/embeddings` gives that line's text.

use crate::common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Server, models_root_arg};
use serde_json::{Value, json};

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const LINES: usize = 20_000;
const MIN_KILLS: usize = 5;
const MAX_KILLS: usize = 10;

fn start(data: &str) -> Server {
    let root = models_root_arg();
    Server::start(&["--models-dir", &root, "--model", MINILM, "--data-dir", data])
}

/// A server with `config` and a data directory of its own (kept while the guard lives).
fn configured(config: &str) -> (Server, (tempfile::TempDir, tempfile::TempDir)) {
    let data = tempfile::tempdir().unwrap();
    let (dir, path) = common::config_file(config);
    let root = models_root_arg();
    let server = Server::start(&[
        "--models-dir",
        &root,
        "--config",
        path.to_str().unwrap(),
        "--data-dir",
        data.path().to_str().unwrap(),
    ]);
    (server, (data, dir))
}

fn text(i: usize) -> String {
    format!("line {i} of the crash test, with a few words to embed")
}

fn upload(server: &Server, jsonl: String) -> String {
    let form = reqwest::blocking::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::blocking::multipart::Part::text(jsonl).file_name("requests.jsonl"),
        );
    let response = reqwest::blocking::Client::new()
        .post(server.url("/v1/files"))
        .multipart(form)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
    let file: Value = response.json().unwrap();
    file["id"].as_str().unwrap().to_string()
}

fn batch(server: &Server, id: &str) -> Value {
    let (status, batch) = server.get(&format!("/v1/batches/{id}"));
    assert_eq!(status, 200, "{batch}");
    batch
}

fn completed(batch: &Value) -> u64 {
    batch["request_counts"]["completed"].as_u64().unwrap()
}

/// A small xorshift generator: the kill moments, reproducible from the seed it prints.
struct Moments(u64);

impl Moments {
    fn next_millis(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[test]
fn a_batch_killed_at_random_moments_completes_with_every_line_once() {
    let data = tempfile::tempdir().unwrap();
    let data_arg = data.path().to_str().unwrap().to_string();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill moments seed: {seed}");
    let mut moments = Moments(seed);

    let mut server = start(&data_arg);
    let jsonl: String = (0..LINES)
        .map(|i| {
            let line = json!({"custom_id": format!("id-{i}"), "method": "POST",
                              "url": "/v1/embeddings",
                              "body": {"model": MINILM, "input": text(i)}});
            format!("{line}\n")
        })
        .collect();
    let file_id = upload(&server, jsonl);
    let (status, created) = server.post_json(
        "/v1/batches",
        &json!({"input_file_id": file_id, "endpoint": "/v1/embeddings",
                "completion_window": "24h"}),
    );
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_string();

    // Kill once the batch has moved on since the last start, a random moment later; after
    // MAX_KILLS, let it finish.
    let mut kills = 0;
    let mut before = 0;
    let deadline = Instant::now() + Duration::from_secs(900);
    let done = loop {
        assert!(Instant::now() < deadline, "the batch did not complete");
        let now = batch(&server, &id);
        if now["status"] == "completed" {
            break now;
        }
        assert!(
            ["validating", "in_progress", "finalizing"].contains(&now["status"].as_str().unwrap()),
            "{now}"
        );
        if kills < MAX_KILLS && completed(&now) > before {
            std::thread::sleep(Duration::from_millis(moments.next_millis(700)));
            let at_kill = batch(&server, &id);
            if at_kill["status"] != "completed" {
                before = completed(&at_kill);
                drop(server);
                kills += 1;
                server = start(&data_arg);
                continue;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("{kills} kills during {LINES} lines");
    assert!(
        kills >= MIN_KILLS,
        "only {kills} kills: the batch ran too fast to test"
    );
    let counts = &done["request_counts"];
    assert_eq!(counts["total"], LINES, "{done}");
    assert_eq!(counts["completed"], LINES, "{done}");
    assert_eq!(counts["failed"], 0, "{done}");
    assert!(done["error_file_id"].is_null(), "{done}");
    server.wait_for_metric("embedserve_batch_jobs", &[("status", "completed")], 1.0);
    assert_eq!(server.metric("embedserve_batch_job_lines_queued", &[]), 0.0);

    let output_id = done["output_file_id"].as_str().unwrap();
    let output = reqwest::blocking::get(server.url(&format!("/v1/files/{output_id}/content")))
        .unwrap()
        .text()
        .unwrap();
    let mut vectors: HashMap<String, Vec<f64>> = HashMap::new();
    for line in output.lines() {
        let result: Value = serde_json::from_str(line).unwrap();
        let custom_id = result["custom_id"].as_str().unwrap().to_string();
        assert_eq!(result["response"]["status_code"], 200, "{line}");
        let vector = result["response"]["body"]["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert!(
            vectors.insert(custom_id.clone(), vector).is_none(),
            "{custom_id} twice"
        );
    }
    assert_eq!(vectors.len(), LINES);

    // The right vectors: what /v1/embeddings gives each line's text, 2,000 at a time.
    for start in (0..LINES).step_by(2000) {
        let texts: Vec<String> = (start..start + 2000).map(text).collect();
        let expected = server.embed(MINILM, json!(texts), json!({}));
        for (offset, want) in expected.iter().enumerate() {
            let got = &vectors[&format!("id-{}", start + offset)];
            let worst = got
                .iter()
                .zip(want)
                .map(|(g, w)| (g - f64::from(*w)).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "id-{}: off by {worst}", start + offset);
        }
    }
}

fn upload_as(server: &Server, key: &str, jsonl: &str) -> (u16, Value) {
    let form = reqwest::blocking::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::blocking::multipart::Part::text(jsonl.to_string()).file_name("r.jsonl"),
        );
    let response = reqwest::blocking::Client::new()
        .post(server.url("/v1/files"))
        .bearer_auth(key)
        .multipart(form)
        .send()
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

fn call(
    server: &Server,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::blocking::Client::new()
        .request(method, server.url(path))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    (status, response.json().unwrap())
}

fn line(i: usize) -> String {
    format!(
        "{}\n",
        json!({"custom_id": format!("c{i}"), "method": "POST", "url": "/v1/embeddings",
               "body": {"model": MINILM, "input": "a"}})
    )
}

/// Each key sees only its own files and batches (another key's id is a 404), and the
/// limits refuse what is too big: a file, a batch, the data directory's quota.
#[test]
fn keys_see_only_their_own_and_the_limits_hold() {
    let (server, _files) = configured(
        "[server]\napi_keys = [\"k1\", \"k2\"]\n\
         [batches]\nmax_file_bytes = 4000\nmax_requests_per_batch = 3\n",
    );
    use reqwest::Method;
    let (status, file) = upload_as(&server, "k1", &(0..2).map(line).collect::<String>());
    assert_eq!(status, 200, "{file}");
    let file_id = file["id"].as_str().unwrap();
    let create = json!({"input_file_id": file_id, "endpoint": "/v1/embeddings",
                        "completion_window": "24h"});
    let (status, created) = call(
        &server,
        "k1",
        Method::POST,
        "/v1/batches",
        Some(create.clone()),
    );
    assert_eq!(status, 200, "{created}");
    let batch_id = created["id"].as_str().unwrap();

    for path in [
        format!("/v1/files/{file_id}"),
        format!("/v1/files/{file_id}/content"),
        format!("/v1/batches/{batch_id}"),
    ] {
        let (status, body) = call(&server, "k2", Method::GET, &path, None);
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = call(&server, "k2", Method::POST, "/v1/batches", Some(create));
    assert_eq!(status, 400, "k2 cannot batch k1's file");
    let (status, _) = call(
        &server,
        "k2",
        Method::POST,
        &format!("/v1/batches/{batch_id}/cancel"),
        None,
    );
    assert_eq!(status, 404);
    let (_, listed) = call(&server, "k2", Method::GET, "/v1/batches", None);
    assert_eq!(listed["data"], json!([]), "{listed}");
    let (_, listed) = call(&server, "k1", Method::GET, "/v1/batches", None);
    assert_eq!(listed["data"][0]["id"], batch_id, "{listed}");
    let (status, _) = call(&server, "k3", Method::GET, "/v1/files", None);
    assert_eq!(status, 401);

    // Too big a file: 413. Too many lines: the batch fails, saying why.
    let (status, body) = upload_as(&server, "k1", &"x".repeat(5000));
    assert_eq!(status, 413, "{body}");
    let (status, file) = upload_as(&server, "k2", &(0..4).map(line).collect::<String>());
    assert_eq!(status, 200, "{file}");
    let create = json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings",
                        "completion_window": "24h"});
    let (_, created) = call(&server, "k2", Method::POST, "/v1/batches", Some(create));
    let path = format!("/v1/batches/{}", created["id"].as_str().unwrap());
    let failed = loop {
        let (_, batch) = call(&server, "k2", Method::GET, &path, None);
        if batch["status"] != "validating" {
            break batch;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(
        failed["errors"]["data"][0]["code"], "too_many_requests",
        "{failed}"
    );
    server.wait_for_metric("embedserve_batch_jobs", &[("status", "failed")], 1.0);
}

/// The data directory's quota counts every key's files together, and deleting frees it.
#[test]
fn the_quota_counts_every_keys_files() {
    let (server, _files) =
        configured("[server]\napi_keys = [\"k1\", \"k2\"]\n[batches]\nmax_disk_bytes = 6000\n");
    let (status, first) = upload_as(&server, "k1", &" ".repeat(3900));
    assert_eq!(status, 200, "{first}");
    let (status, body) = upload_as(&server, "k2", &" ".repeat(3900));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "quota_exceeded", "{body}");
    let path = format!("/v1/files/{}", first["id"].as_str().unwrap());
    let (status, deleted) = call(&server, "k1", reqwest::Method::DELETE, &path, None);
    assert_eq!(
        (status, &deleted["deleted"]),
        (200, &json!(true)),
        "{deleted}"
    );
    let (status, body) = upload_as(&server, "k2", &" ".repeat(3900));
    assert_eq!(status, 200, "{body}");
}

#[test]
fn without_a_data_dir_the_routes_say_how_to_turn_them_on() {
    let root = models_root_arg();
    let server = Server::start(&["--models-dir", &root]);
    let (status, body) = server.get("/v1/batches");
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--data-dir"),
        "{body}"
    );
}

/// Past `batches.max_active_batches` batches not yet over, creating one is a 429; once one
/// is over, it is taken again.
#[test]
fn batches_past_the_active_limit_wait_their_turn() {
    let (server, _files) = configured("[batches]\nmax_active_batches = 1\n");
    let file_id = upload(&server, (0..5000).map(line).collect());
    let create = json!({"input_file_id": file_id, "endpoint": "/v1/embeddings",
                        "completion_window": "24h"});
    let (status, first) = server.post_json("/v1/batches", &create);
    assert_eq!(status, 200, "{first}");
    let (status, refused) = server.post_json("/v1/batches", &create);
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["code"], "batch_queue_full", "{refused}");
    let id = first["id"].as_str().unwrap();
    let (status, _) = server.post_empty(&format!("/v1/batches/{id}/cancel"));
    assert_eq!(status, 200);
    while batch(&server, id)["status"] != "cancelled" {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, second) = server.post_json("/v1/batches", &create);
    assert_eq!(status, 200, "{second}");
}

/// With `server.replica_name`, ids carry the name and every response says it; an id naming
/// another replica is a 503 (the router sends it here only while that replica is out of
/// reach), never a 404 that would read as "gone"; and `after` may be another replica's id.
#[test]
fn a_replicas_ids_carry_its_name_and_another_replicas_are_unavailable_here() {
    let (server, _files) = configured("[server]\nreplica_name = \"embedserve-1\"\n");
    let health = reqwest::blocking::get(server.url("/health")).unwrap();
    assert_eq!(health.headers()["x-embedserve-replica"], "embedserve-1");
    let file_id = upload(&server, (0..3).map(line).collect());
    assert!(file_id.ends_with("-embedserve-1"), "{file_id}");
    let create = json!({"input_file_id": file_id, "endpoint": "/v1/embeddings",
                        "completion_window": "24h"});
    let (status, created) = server.post_json("/v1/batches", &create);
    assert_eq!(status, 200, "{created}");
    let batch_id = created["id"].as_str().unwrap();
    assert!(batch_id.ends_with("-embedserve-1"), "{batch_id}");

    let key = "0192f3a4b5c6d7e8f90a1b2c3d4e5f60";
    let theirs = format!("file-{key}-embedserve-2");
    for path in [
        format!("/v1/files/{theirs}"),
        format!("/v1/batches/batch_{key}-embedserve-2"),
    ] {
        let response = reqwest::blocking::get(server.url(&path)).unwrap();
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(response.headers()["retry-after"], "5");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "replica_unavailable", "{body}");
    }
    let (status, body) = server.post_json(
        "/v1/batches",
        &json!({"input_file_id": theirs, "endpoint": "/v1/embeddings",
                "completion_window": "24h"}),
    );
    assert_eq!(status, 503, "{body}");
    let (status, body) = server.get(&format!("/v1/files/file-{key}-embedserve-1"));
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("file_not_found"))
    );

    // Ids sort by creation whichever replica made them.
    let newest = format!("file-{}-embedserve-2", "f".repeat(32));
    let (_, page) = server.get(&format!("/v1/files?after={newest}"));
    assert_eq!(page["first_id"], json!(file_id), "{page}");
    let oldest = format!("file-{}-embedserve-2", "0".repeat(32));
    let (_, page) = server.get(&format!("/v1/files?after={oldest}"));
    assert_eq!(page["data"], json!([]), "{page}");
}

/// The lines of a file's content, each parsed.
fn result_lines(server: &Server, file_id: &str) -> Vec<Value> {
    let response =
        reqwest::blocking::get(server.url(&format!("/v1/files/{file_id}/content"))).unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Past `batches.expire_after` a batch is `expired`: what ran is in its output, every line
/// it did not run is in its error file as `batch_expired` (OpenAI's shape), each line once.
#[test]
fn a_batch_past_its_deadline_expires_with_each_line_in_one_of_its_files() {
    let (server, _files) = configured("[batches]\nexpire_after = \"1s\"\n");
    let file_id = upload(&server, (0..LINES).map(line).collect());
    let create = json!({"input_file_id": file_id, "endpoint": "/v1/embeddings",
                        "completion_window": "24h"});
    let (status, created) = server.post_json("/v1/batches", &create);
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let batch = batch(&server, id);
        if batch["status"] != "validating" && batch["status"] != "in_progress" {
            break batch;
        }
        assert!(Instant::now() < deadline, "{batch}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done["status"], "expired", "{done}");
    assert!(done["expired_at"].as_i64().is_some(), "{done}");
    let counts = &done["request_counts"];
    assert_eq!(counts["total"], LINES as u64, "{done}");
    assert!(counts["failed"].as_u64().unwrap() > 0, "{done}");

    let mut seen = std::collections::HashSet::new();
    let ran = match done["output_file_id"].as_str() {
        Some(output) => result_lines(&server, output),
        None => Vec::new(),
    };
    for result in &ran {
        assert_eq!(result["response"]["status_code"], 200, "{result}");
    }
    let expired = result_lines(&server, done["error_file_id"].as_str().unwrap());
    for result in &expired {
        assert_eq!(result["error"]["code"], "batch_expired", "{result}");
        assert_eq!(result["response"], Value::Null, "{result}");
    }
    for result in ran.iter().chain(&expired) {
        let custom_id = result["custom_id"].as_str().unwrap().to_string();
        assert!(seen.insert(custom_id.clone()), "{custom_id} twice");
    }
    assert_eq!(seen.len(), LINES);
    assert_eq!(counts["completed"], ran.len() as u64, "{done}");
    assert_eq!(counts["failed"], expired.len() as u64, "{done}");
}

/// A file past `batches.file_ttl` is gone from the API at once (its bytes go at the
/// engine's next sweep).
#[test]
fn a_file_past_its_ttl_is_gone() {
    let (server, _files) = configured("[batches]\nfile_ttl = \"1s\"\n");
    let file_id = upload(&server, line(0));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.get(&format!("/v1/files/{file_id}"));
        if status == 404 {
            assert_eq!(body["error"]["code"], "file_not_found", "{body}");
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "{file_id} outlived its ttl");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, page) = server.get("/v1/files");
    assert_eq!(page["data"], json!([]), "{page}");
}

/// A raw upload of a file announced at `length` bytes, its first byte sent.
fn start_upload(server: &Server, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(server.base.trim_start_matches("http://")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: {length}\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"a.jsonl\"\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
}

fn answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Uploads still arriving hold their announced size against the quota together, so many at
/// once cannot fill the disk past it before any is checked; one that stalls for
/// `server.body_timeout` ends with 408 and gives its space back.
#[test]
fn uploads_arriving_hold_their_space_and_a_stalled_one_ends() {
    let (server, _files) =
        configured("[server]\nbody_timeout = \"1s\"\n[batches]\nmax_disk_bytes = 1000000\n");
    let mut stalled = start_upload(&server, 700_000);
    server.wait_for_metric("embedserve_batch_upload_bytes", &[], 700_000.0);
    // Refused on its announced size, before a byte of it is read.
    let refused = answer(&mut start_upload(&server, 400_000));
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    assert!(refused.contains("quota_exceeded"), "{refused}");
    let answer = answer(&mut stalled);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("stalled"), "{answer}");
    let (status, body) = upload_as(&server, "any", &" ".repeat(400_000));
    assert_eq!(status, 200, "{body}");
}

/// An upload that never stalls but trickles (a byte every 100 ms) ends once
/// `server.body_timeout` has passed, not after `server.request_timeout`.
#[test]
fn an_upload_slower_than_the_floor_ends() {
    let (server, _files) = configured("[server]\nbody_timeout = \"1s\"\n");
    let mut slow = start_upload(&server, 100_000);
    let mut trickle = slow.try_clone().unwrap();
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        while started.elapsed() < Duration::from_secs(20) && trickle.write_all(b"x").is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let answer = answer(&mut slow);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("KiB/s"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    slow.shutdown(std::net::Shutdown::Both).unwrap();
    sender.join().unwrap();
}
