//! `runtime.spinning = adaptive` follows other processes' load: a busy loop in this process
//! (another process to the server) makes the server rebuild its session without spinning,
//! and once the loop stops, with spinning again; every vector along the way is the
//! reference's. In a file of its own so that no other test's load counts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Server, models_root_arg};
use serde_json::json;

const MODEL: &str = "tiny/bert-mean";
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn adaptive_sessions_stop_spinning_while_another_process_keeps_a_core_busy() {
    let server = Server::start(&["--models-dir", &models_root_arg(), "--spinning", "adaptive"]);
    let contended = |s: &Server| s.metric("embedserve_cpu_contended", &[]);
    let respins =
        |s: &Server, to: &str| s.metric("embedserve_session_respins_total", &[("spinning", to)]);
    embed_until(&server, "serving on a quiet machine", |s| {
        contended(s) == 0.0
    });

    let stop = Arc::new(AtomicBool::new(false));
    let hog = std::thread::spawn({
        let stop = stop.clone();
        move || {
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        }
    });
    embed_until(&server, "rebuilt without spinning", |s| {
        contended(s) == 1.0 && respins(s, "never") >= 1.0
    });
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();

    embed_until(
        &server,
        "rebuilt with spinning once the core was free",
        |s| contended(s) == 0.0 && respins(s, "adaptive") >= 1.0,
    );
}
