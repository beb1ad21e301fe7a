//! `runtime.spinning = adaptive` follows other processes' load: a busy loop in this process
//! (another process to the server) makes a busy server rebuild its session without
//! spinning, and once the loop stops, with spinning again; every vector along the way is
//! the reference's. An idle server keeps spinning beside the loop. In a file of its own so
//! that no other test's load counts.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, models_root_arg};
use serde_json::json;

/// A model whose runs keep the server's cores busy, as the decision wants to see.
const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";
const WITHIN: Duration = Duration::from_secs(120);

/// Embeds the reference's first case until `done` holds, checking every vector.
fn embed_until(server: &Server, what: &str, done: impl Fn(&Server) -> bool) {
    let reference = common::reference(MODEL);
    let case = &reference.cases[0];
    let deadline = Instant::now() + WITHIN;
    loop {
        let got = server.embed(MODEL, json!(case.input), json!({}));
        let similarity = common::cosine(&got[0], &case.embedding);
        assert!(similarity >= 0.99999, "cosine {similarity} while {what}");
        if done(server) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}");
    }
}

/// A thread that keeps one core busy until dropped.
struct Hog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hog {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn adaptive_sessions_stop_spinning_while_another_process_keeps_a_core_busy() {
    // Any other server's runs would be this one's other processes.
    let _alone = common::alone();
    let server = Server::start(&["--models-dir", &models_root_arg(), "--spinning", "adaptive"]);
    let contended = |s: &Server| s.metric("embedserve_cpu_contended", &[]);
    let respins =
        |s: &Server, to: &str| s.metric("embedserve_session_respins_total", &[("spinning", to)]);
    embed_until(&server, "serving on a quiet machine", |s| {
        contended(s) == 0.0
    });

    let hog = Hog::start();
    embed_until(&server, "rebuilt without spinning", |s| {
        contended(s) == 1.0 && respins(s, "never") >= 1.0
    });
    drop(hog);

    embed_until(
        &server,
        "rebuilt with spinning once the core was free",
        |s| contended(s) == 0.0 && respins(s, "adaptive") >= 1.0,
    );
}

#[test]
fn an_idle_server_keeps_spinning_beside_a_busy_process() {
    // Any other server's runs would be this one's other processes.
    let _alone = common::alone();
    let server = Server::start(&["--models-dir", &models_root_arg(), "--spinning", "adaptive"]);
    // One request starts the watcher; then the server goes idle (its load's measuring runs
    // and this request behind it).
    embed_until(&server, "serving", |_| true);
    let deadline = Instant::now() + WITHIN;
    while server.metric("embedserve_own_cpu_cores", &[]) >= 0.1 {
        assert!(Instant::now() < deadline, "never idle");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.metric("embedserve_cpu_contended", &[]), 0.0);
    let hog = Hog::start();
    server.wait_for_metric("embedserve_other_processes_cpu_cores", &[], 0.8);
    // Twelve of the watcher's windows with the hog running and no request: spinning is
    // costing nothing, so it stays.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert_eq!(server.metric("embedserve_cpu_contended", &[]), 0.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let respins = server.metric("embedserve_session_respins_total", &[("spinning", "never")]);
    assert_eq!(respins, 0.0);
    drop(hog);
}
