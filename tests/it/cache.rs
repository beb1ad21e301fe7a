//! The LRU model cache over real HTTP: load on first use, single flight, eviction in LRU
//! order, pins, preload, idle timeout, memory budget, admin load/unload, and eviction that
//! never cuts off a request in flight.

use crate::common;

use std::sync::{Arc, Barrier};

use common::{Server, config_file, cosine, model_dir, models_root_arg, reference};
use serde_json::json;

const TINY: [&str; 4] = [
    "tiny/bert-mean",
    "tiny/bert-cls",
    "tiny/decoder-lasttoken",
    "tiny/bert-pooled",
];
const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Embeds the reference case "Hello" with `model` and checks it against sentence-transformers.
fn assert_correct(server: &Server, model: &str, reference_id: &str) {
    let reference = reference(reference_id);
    let case = reference
        .cases
        .iter()
        .find(|c| c.input == "Hello" && c.prompt_name.is_none())
        .unwrap();
    let got = server.embed(model, json!(case.input), json!({}));
    let c = cosine(&got[0], &case.embedding);
    assert!(c >= 0.99999, "{model}: cosine {c}");
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Successful loads of `model` so far.
fn loads(server: &Server, model: &str) -> f64 {
    server.metric(
        "embedserve_model_loads_total",
        &[("model", model), ("result", "ok")],
    )
}

fn evictions(server: &Server, model: &str, reason: &str) -> f64 {
    server.metric(
        "embedserve_model_evictions_total",
        &[("model", model), ("reason", reason)],
    )
}

#[test]
fn cycling_four_models_through_two_slots_evicts_in_lru_order() {
    let server = Server::start(&[
        "--models-dir",
        &models_root_arg(),
        "--max-loaded-models",
        "2",
    ]);
    assert!(
        server.loaded().is_empty(),
        "nothing loads before it is asked for"
    );
    let [a, b, c, d] = TINY;
    for round in 0..2 {
        for (model, previous) in [(a, d), (b, a), (c, b), (d, c)] {
            assert_correct(&server, model, model);
            let want = if round == 0 && model == a {
                sorted(&[a])
            } else {
                sorted(&[model, previous])
            };
            assert_eq!(server.loaded(), want, "after {model} in round {round}");
        }
    }
    // Every request refreshes recency: a hit on `c` makes `d` the least recently used.
    assert_correct(&server, c, c);
    assert_correct(&server, a, a);
    assert_eq!(server.loaded(), sorted(&[c, a]));
    // Each use after an eviction was a real reload.
    assert_eq!(loads(&server, "tiny/bert-mean"), 3.0);
}

#[test]
fn a_pinned_preloaded_model_is_never_evicted() {
    let (_dir, config) = config_file(&format!(
        "models_dirs = [{:?}]\n[cache]\nmax_loaded_models = 2\n[[models]]\nname = \"pinned\"\nsource = {:?}\npin = true\npreload = true\n",
        models_root_arg(),
        model_dir("tiny/bert-mean").to_str().unwrap(),
    ));
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    assert_never_evicted(&server, "pinned", "tiny/bert-mean");
}

/// `--pin` pins from the command line what `pin = true` pins in the file: a model that
/// clients asking for others cannot evict.
#[test]
fn a_model_pinned_on_the_command_line_is_never_evicted() {
    let root = models_root_arg();
    let server = Server::start(&[
        "--models-dir",
        &root,
        "--max-loaded-models",
        "2",
        "--pin",
        "tiny/bert-mean",
    ]);
    assert_never_evicted(&server, "tiny/bert-mean", "tiny/bert-mean");
}

/// `name` (serving `model`) is loaded and pinned from the start and stays loaded while
/// the other tiny models take turns in the one slot left.
fn assert_never_evicted(server: &Server, name: &str, model: &str) {
    assert!(
        server.model_states().contains(&(name.into(), true, true)),
        "preloaded and pinned: {:?}",
        server.model_states()
    );
    for _ in 0..2 {
        for other in &TINY[1..] {
            assert_correct(server, other, other);
            assert!(server.loaded().contains(&name.to_string()));
            assert_eq!(server.loaded().len(), 2);
        }
    }
    assert_correct(server, name, model);
    assert_eq!(loads(server, name), 1.0);
}

#[test]
fn concurrent_first_requests_share_one_load() {
    let server = Arc::new(Server::start(&["--models-dir", &models_root_arg()]));
    let start = Arc::new(Barrier::new(32));
    let threads: Vec<_> = (0..32)
        .map(|_| {
            let (server, start) = (server.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                server.embed("tiny/bert-cls", json!("Hello"), json!({}))
            })
        })
        .collect();
    let vectors: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(vectors.iter().all(|v| v == &vectors[0]));
    assert_correct(&server, "tiny/bert-cls", "tiny/bert-cls");
    assert_eq!(loads(&server, "tiny/bert-cls"), 1.0);
}

#[test]
fn eviction_does_not_cut_off_a_request_in_flight() {
    let server = Arc::new(Server::start(&[
        "--models-dir",
        &models_root_arg(),
        "--max-loaded-models",
        "1",
    ]));
    let reference = reference(MINILM);
    let long = reference
        .cases
        .iter()
        .max_by_key(|c| c.input.len())
        .unwrap()
        .clone();
    let inputs = vec![long.input.clone(); 100];
    let in_flight = {
        let server = server.clone();
        std::thread::spawn(move || server.embed(MINILM, json!(inputs), json!({})))
    };
    // The request holds the model from the moment its load completes.
    server.wait_for_metric(
        "embedserve_model_loads_total",
        &[("model", MINILM), ("result", "ok")],
        1.0,
    );
    assert_correct(&server, TINY[0], TINY[0]);
    assert_eq!(
        server.loaded(),
        [TINY[0]],
        "MiniLM was evicted to make room"
    );
    assert_eq!(evictions(&server, MINILM, "lru"), 1.0);
    let vectors = in_flight.join().unwrap();
    assert_eq!(vectors.len(), 100);
    for vector in &vectors {
        assert!(cosine(vector, &long.embedding) >= 0.99999);
    }
}

#[test]
fn idle_models_are_unloaded() {
    let (_dir, config) = config_file("[cache]\nidle_timeout = \"300ms\"\n");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--models-dir",
        &models_root_arg(),
    ]);
    assert_correct(&server, TINY[0], TINY[0]);
    server.wait_for_metric(
        "embedserve_model_evictions_total",
        &[("model", TINY[0]), ("reason", "idle")],
        1.0,
    );
    assert!(server.loaded().is_empty());
    assert_correct(&server, TINY[0], TINY[0]);
}

#[test]
fn the_memory_budget_evicts_by_measured_size() {
    let (_dir, config) =
        config_file("[cache]\nmax_model_memory = \"40MiB\"\nmax_loaded_models = 8\n");
    let server = Server::start(&[
        "--config",
        config.to_str().unwrap(),
        "--models-dir",
        &models_root_arg(),
    ]);
    assert_correct(&server, MINILM, MINILM);
    let (_, json) = server.get(&format!("/v1/models/{MINILM}"));
    let memory = json["memory_bytes"].as_u64().unwrap();
    assert!(memory > 40 << 20, "MiniLM's load added {memory} bytes");
    assert_correct(&server, TINY[0], TINY[0]);
    assert_eq!(server.loaded(), [TINY[0]]);
    assert_eq!(evictions(&server, MINILM, "memory"), 1.0);
}

#[test]
fn admin_routes_load_and_unload() {
    let server = Server::start(&["--models-dir", &models_root_arg()]);
    let (status, json) = server.post_empty("/admin/models/tiny/bert-cls/load");
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["loaded"], true);
    assert_eq!(server.loaded(), ["tiny/bert-cls"]);
    let (status, json) = server.delete("/admin/models/tiny/bert-cls");
    assert_eq!((status, &json["unloaded"]), (200, &json!(true)), "{json}");
    assert!(server.loaded().is_empty());
    let (status, json) = server.delete("/admin/models/tiny/bert-cls");
    assert_eq!((status, &json["unloaded"]), (200, &json!(false)), "{json}");
    let (status, json) = server.delete("/admin/models/no/such");
    common::assert_error(status, &json, 404, Some("model_not_found"));
    let (status, json) = server.post_empty("/admin/models/no/such/load");
    common::assert_error(status, &json, 404, Some("model_not_found"));
    let (status, json) = server.post_empty("/admin/models/tiny/bert-cls/reload");
    common::assert_error(status, &json, 404, Some("not_found"));
}
