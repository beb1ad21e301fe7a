//! Shared by the integration tests: the real `embedserve` binary started on a free port, a
//! blocking HTTP client, and the reference vectors of `../shared/models`.

pub mod fake_hub;

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// Bound on how long a server may take to load its models and start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

pub fn models_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models")
}

/// `models_root()` as a command-line argument.
pub fn models_root_arg() -> String {
    models_root().to_str().unwrap().to_string()
}

/// The folders in `dir`, sorted.
pub fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

pub fn model_dir(id: &str) -> PathBuf {
    models_root().join(id)
}

pub fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_embedserve"))
}

/// Runs the binary to completion (for commands that exit on their own).
pub fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> Output {
    binary()
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run embedserve")
}

/// The machine the tests share. Every server holds a share of it while it runs; a test that
/// measures the machine (its CPU time, memory or latency), which another test's server on the
/// same two cores would blur, takes it whole with `alone`.
struct Machine {
    /// Servers running with a share, and whether a test holds the machine alone.
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

static MACHINE: Machine = Machine {
    state: Mutex::new((0, false)),
    changed: Condvar::new(),
};

thread_local! {
    /// Whether this thread's test holds the machine alone: its servers then take no share.
    static ALONE: Cell<bool> = const { Cell::new(false) };
}

impl Machine {
    fn wait_until(&self, free: impl Fn(&(usize, bool)) -> bool) -> MutexGuard<'_, (usize, bool)> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.changed
            .wait_while(state, |state| !free(state))
            .unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut (usize, bool))) {
        change(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        self.changed.notify_all();
    }
}

/// The machine, for this test alone, until dropped: waits for every other test's servers to
/// stop, and keeps others from starting. This test's servers must start on its own thread.
pub fn alone() -> Alone {
    MACHINE
        .wait_until(|&(servers, alone)| servers == 0 && !alone)
        .1 = true;
    ALONE.set(true);
    Alone
}

pub struct Alone;

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.set(false);
        MACHINE.update(|state| state.1 = false);
    }
}

/// A server's share of the machine, given back when dropped.
pub struct Share;

/// A share of the machine for work other than a `Server` (a CLI run that keeps the cores
/// busy), so that a test measuring the machine does not run beside it.
pub fn share() -> Option<Share> {
    Share::take()
}

impl Share {
    /// None in a test that has the machine alone.
    fn take() -> Option<Self> {
        if ALONE.get() {
            return None;
        }
        MACHINE.wait_until(|&(_, alone)| !alone).0 += 1;
        Some(Share)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        MACHINE.update(|state| state.0 -= 1);
    }
}

/// A running `embedserve serve`, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
    log: Arc<Mutex<Vec<String>>>,
    client: reqwest::blocking::Client,
    /// Holds the port file.
    _scratch: tempfile::TempDir,
    _share: Option<Share>,
}

/// How far a launch waits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The port file is written: the server accepts connections.
    Listening,
    /// `/ready` answers 200: every preload is done.
    Ready,
}

/// How often start-up and metric conditions are checked.
const POLL: Duration = Duration::from_millis(10);

impl Server {
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts the server on port 0 and waits until it is ready.
    pub fn start_with_env(args: &[&str], envs: &[(&str, &str)]) -> Self {
        match Self::try_start(args, envs) {
            Ok(server) => server,
            Err(log) => panic!("embedserve did not start:\n{log}"),
        }
    }

    /// Like `start`, but returns the server's log if it exits before it is ready.
    pub fn try_start(args: &[&str], envs: &[(&str, &str)]) -> Result<Self, String> {
        Self::launch(&[], args, envs, Until::Ready)
    }

    /// Starts the server under `wrapper` (a command that runs the program after its own
    /// arguments, such as strace) and waits until it is ready.
    pub fn start_under(wrapper: &[&str], args: &[&str]) -> Self {
        Self::launch(wrapper, args, &[], Until::Ready)
            .unwrap_or_else(|log| panic!("embedserve did not start:\n{log}"))
    }

    /// Starts the server and returns as soon as it listens, before its preloads are done.
    pub fn start_listening(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::launch(&[], args, envs, Until::Listening)
            .unwrap_or_else(|log| panic!("embedserve did not start:\n{log}"))
    }

    /// Spawns `embedserve serve` on a free port, reads the port from `--port-file`, and
    /// (for `Until::Ready`) polls `/ready`. Fails with the log if the server exits first.
    fn launch(
        wrapper: &[&str],
        args: &[&str],
        envs: &[(&str, &str)],
        until: Until,
    ) -> Result<Self, String> {
        let share = Share::take();
        let scratch = tempfile::tempdir().unwrap();
        let port_file = scratch.path().join("port");
        let mut command = match wrapper.split_first() {
            None => binary(),
            Some((program, wrapper_args)) => {
                let mut command = Command::new(program);
                command
                    .args(wrapper_args)
                    .arg(env!("CARGO_BIN_EXE_embedserve"));
                command
            }
        };
        let mut child = command
            .arg("serve")
            .args(["--port", "0", "--host", "127.0.0.1", "--port-file"])
            .arg(&port_file)
            .args(args)
            .env("EMBEDSERVE_LOG", "info,ort=warn")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn embedserve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        // Drains stderr for the server's whole life, so it never blocks on a full pipe; the
        // thread ends when the server exits.
        let drain = {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            })
        };
        // No pooled connections: a test's raw connections are the only ones the server holds.
        let client = reqwest::blocking::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut base = None;
        loop {
            if base.is_none()
                && let Ok(text) = std::fs::read_to_string(&port_file)
            {
                base = Some(format!("http://127.0.0.1:{}", text.trim()));
            }
            let started = match (&base, until) {
                (Some(_), Until::Listening) => true,
                (Some(base), Until::Ready) => client
                    .get(format!("{base}/ready"))
                    .send()
                    .is_ok_and(|r| r.status() == 200),
                (None, _) => false,
            };
            if started {
                let base = base.unwrap_or_default();
                return Ok(Self {
                    child,
                    base,
                    log,
                    client,
                    _scratch: scratch,
                    _share: share,
                });
            }
            let exited = child.try_wait().expect("try_wait").is_some();
            if exited || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = drain.join();
                return Err(log.lock().unwrap().join("\n"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The server's process id (under a wrapper, the wrapper's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's peak resident memory so far, in bytes (Linux's VmHWM).
    pub fn peak_resident_bytes(&self) -> u64 {
        self.status_kib("VmHWM:") * 1024
    }

    /// Starts a new peak: `peak_resident_bytes` counts from the resident memory of now.
    pub fn reset_peak_resident(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").unwrap();
    }

    /// The server's resident memory now, in bytes (Linux's VmRSS).
    pub fn resident_bytes(&self) -> u64 {
        self.status_kib("VmRSS:") * 1024
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    }

    /// Polls resident memory until it is at most `bytes`, for at most `within`; the last
    /// reading if it never got there.
    pub fn wait_for_resident_at_most(&self, bytes: u64, within: Duration) -> Result<u64, u64> {
        let deadline = Instant::now() + within;
        loop {
            let resident = self.resident_bytes();
            if resident <= bytes {
                return Ok(resident);
            }
            if Instant::now() > deadline {
                return Err(resident);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls `/ready` until it answers 200.
    pub fn wait_until_ready(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while self.get("/ready").0 != 200 {
            assert!(Instant::now() < deadline, "not ready:\n{}", self.logs());
            std::thread::sleep(POLL);
        }
    }

    /// The server's log so far, for failure messages (tests assert on responses and
    /// metrics, not on log wording).
    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a line of the log satisfies `found`: the log is read from the server's
    /// stderr on another thread, so a line written a moment ago may not be in `logs()` yet.
    pub fn wait_for_log(&self, found: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while !self.log.lock().unwrap().iter().any(|line| found(line)) {
            assert!(
                Instant::now() < deadline,
                "no such log line:\n{}",
                self.logs()
            );
            std::thread::sleep(POLL);
        }
    }

    /// The value of metric `name` in `/metrics` whose labels include `labels` (summed over
    /// the other labels); 0 when there is no such sample yet.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_in(&self.metrics_page(), name, labels)
    }

    /// The whole `/metrics` page.
    pub fn metrics_page(&self) -> String {
        let response = self
            .client
            .get(self.url("/metrics"))
            .send()
            .expect("GET /metrics");
        response.text().expect("metrics text")
    }

    /// Polls `/metrics` until `name` (as `metric` reads it) reaches `at_least`.
    pub fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let value = self.metric(name, labels);
            if value >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} is {value}, never reached {at_least}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// `(loaded, pinned)` of every model `/v1/models` lists.
    pub fn model_states(&self) -> Vec<(String, bool, bool)> {
        let (status, json) = self.get("/v1/models");
        assert_eq!(status, 200, "{json}");
        json["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["id"].as_str().unwrap().to_string(),
                    m["loaded"].as_bool().unwrap(),
                    m["pinned"].as_bool().unwrap(),
                )
            })
            .collect()
    }

    /// Names of loaded models, sorted.
    pub fn loaded(&self) -> Vec<String> {
        let mut loaded: Vec<String> = self
            .model_states()
            .into_iter()
            .filter(|(_, loaded, _)| *loaded)
            .map(|(id, _, _)| id)
            .collect();
        loaded.sort();
        loaded
    }

    pub fn post_empty(&self, path: &str) -> (u16, Value) {
        decode(self.client.post(self.url(path)).send().expect("POST"))
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        decode(self.client.delete(self.url(path)).send().expect("DELETE"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .expect("POST");
        decode(response)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        decode(self.client.get(self.url(path)).send().expect("GET"))
    }

    /// Embeds `input` and returns the float vectors, asserting success.
    pub fn embed(&self, model: &str, input: Value, extra: Value) -> Vec<Vec<f32>> {
        let mut body =
            serde_json::json!({"model": model, "input": input, "encoding_format": "float"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let (status, json) = self.post_json("/v1/embeddings", &body);
        assert_eq!(status, 200, "{json}\n{}", self.logs());
        vectors(&json)
    }
}

impl Server {
    /// Sends `signal` (as `kill` names it: TERM, INT) to the server, without waiting.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// Waits up to `within` for the server to exit.
    pub fn wait_for_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM to the server (under a wrapper, to the wrapper's child) and waits for
    /// the process started to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let started = self.child.id();
        let children = format!("/proc/{started}/task/{started}/children");
        let pid = std::fs::read_to_string(children)
            .ok()
            .and_then(|c| c.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| started.to_string());
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn decode(response: reqwest::blocking::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().expect("body");
    let json =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"));
    (status, json)
}

/// The value of metric `name` in a Prometheus text `page` whose labels include `labels`
/// (summed over the other labels); 0 when there is no such sample.
pub fn metric_in(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            let (metric, rest) = sample.split_once('{').unwrap_or((sample, ""));
            let labelled = labels.iter().all(|(k, v)| {
                rest.split(',')
                    .any(|pair| pair.trim_end_matches('}') == format!("{k}=\"{v}\""))
            });
            (metric == name && labelled).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// The `data[].embedding` float arrays of a response, checking `index` order.
pub fn vectors(json: &Value) -> Vec<Vec<f32>> {
    let data = json["data"].as_array().expect("data array");
    data.iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], i);
            item["embedding"]
                .as_array()
                .expect("float embedding")
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// Asserts an OpenAI error envelope with this status and `code`, returning the message.
pub fn assert_error(
    status: u16,
    json: &Value,
    want_status: u16,
    want_code: Option<&str>,
) -> String {
    assert_eq!(status, want_status, "{json}");
    let error = json["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error envelope: {json}"));
    let message = error["message"].as_str().expect("message").to_string();
    assert!(!message.is_empty());
    assert!(error["type"].is_string(), "{json}");
    assert!(
        error.contains_key("param") && error.contains_key("code"),
        "{json}"
    );
    if let Some(code) = want_code {
        assert_eq!(error["code"], code, "{json}");
    }
    message
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "dimensions differ");
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[derive(Deserialize)]
pub struct Reference {
    /// `None` for static embeddings, which never truncate.
    pub max_seq_length: Option<usize>,
    pub cases: Vec<Case>,
}

#[derive(Deserialize, Clone)]
pub struct Case {
    pub input: String,
    pub embedding: Vec<f32>,
    #[serde(default)]
    pub prompt_name: Option<String>,
}

pub fn reference(id: &str) -> Reference {
    let text =
        std::fs::read_to_string(model_dir(id).join("reference.json")).expect("reference.json");
    serde_json::from_str(&text).expect("reference.json")
}

/// Copies a folder recursively (a fixture that a test changes).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Writes `text` as a config file in a fresh temporary folder.
pub fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("embedserve.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}
