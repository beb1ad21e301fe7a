//! The engine ceiling: the bare ONNX Runtime session, no server, on all-MiniLM-L6-v2 fp32
//! with the server's session options, in each spinning mode (`always`; `adaptive`'s
//! spinning inside runs that stops at each run's end, as on a quiet machine; `never`): single
//! sentences one run at a time, batches of 32 copies of that sentence, the 32 corpus
//! sentences sorted by length in one run, and 16 passages of 256 tokens in one run; with
//! BENCH_HEADS (the `bench` folder `scripts/make-bench-heads` writes), its cross-encoder,
//! classifier and SPLADE encoder on batches of 32 too. Prints
//! one JSON object: each workload's best over the modes (the highest rate, the lowest
//! latencies), and every mode's own figures under `modes`.
//!
//! `cargo bench --bench engine` (BENCH_SECONDS per measurement, default 5); under `cargo
//! test` it runs each measurement once as a smoke test. `cargo bench --bench engine --
//! --commands` measures on request instead (`serve_commands`): `scripts/bench` asks it for
//! bursts beside each of the server's windows and compares the server against the best.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use embedserve::config::RuntimeConfig;
use embedserve::runtime::{Device, Runtime, Spinning};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use serde_json::{Value, json};
use tokenizers::{Tokenizer, TruncationParams};

fn main() {
    // SAFETY: no other thread exists yet.
    unsafe { embedserve::runtime::disable_telemetry() };
    let full = std::env::args().any(|a| a == "--bench");
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let budget = if full {
        Duration::from_secs_f64(seconds)
    } else {
        Duration::ZERO
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/sentence-transformers/all-MiniLM-L6-v2");
    let corpus = include_str!("corpus.txt").lines().collect::<Vec<_>>();

    let runtime = Runtime::init(&RuntimeConfig::default())
        .expect("ONNX Runtime (run scripts/fetch-onnxruntime)");
    let open = |onnx: &Path, spinning: Spinning| {
        runtime
            .with_own_pool(spinning)
            .session_builder(Device::Cpu, None)
            .expect("session options")
            .0
            .commit_from_file(onnx)
            .expect("session")
    };
    let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: 256,
            ..TruncationParams::default()
        }))
        .expect("truncation");
    let encode = |text: &str| {
        tokenizer
            .encode(text, true)
            .expect("encode")
            .get_ids()
            .to_vec()
    };

    let single = vec![encode(corpus[0])];
    // Long inputs: 16 passages of the corpus's sentences run together from the i-th on,
    // each cut at 256 tokens (all-MiniLM-L6-v2's max_seq_length), in one run.
    let passages = (0..16).map(|i| encode(&passage(&corpus, i))).collect();
    let copies = vec![single[0].clone(); 32];
    let mut sorted: Vec<Vec<u32>> = corpus.iter().map(|t| encode(t)).collect();
    sorted.sort_by_key(Vec::len);
    // The models with a head (scripts/make-bench-heads), from BENCH_HEADS: a cross-encoder
    // on 32 pairs of the first sentence with the first 8 corpus sentences (the bench's
    // rerank request), 4 times over, tokenized as pairs and sorted by length; a classifier
    // and a SPLADE encoder on the 32 corpus sentences sorted by length; each in one run.
    let heads = std::env::var_os("BENCH_HEADS").map_or_else(Vec::new, |dir| {
        let mut pairs: Vec<(Vec<u32>, Vec<u32>)> = corpus[..8]
            .iter()
            .cycle()
            .take(32)
            .map(|document| {
                let encoding = tokenizer
                    .encode((corpus[0], *document), true)
                    .expect("pair");
                (
                    encoding.get_ids().to_vec(),
                    encoding.get_type_ids().to_vec(),
                )
            })
            .collect();
        pairs.sort_by_key(|(ids, _)| ids.len());
        let (pair_ids, pair_types) = pairs.into_iter().unzip();
        let onnx = |name: &str| Path::new(&dir).join(name).join("onnx/model.onnx");
        vec![
            Head {
                workload: "rerank_batch32",
                onnx: onnx("minilm-reranker"),
                ids: pair_ids,
                types: Some(pair_types),
            },
            Head {
                workload: "classify_batch32",
                onnx: onnx("minilm-classifier"),
                ids: sorted.clone(),
                types: None,
            },
            Head {
                workload: "splade_batch32",
                onnx: onnx("minilm-splade"),
                ids: sorted.clone(),
                types: None,
            },
        ]
    });

    let onnx = dir.join("onnx/model.onnx");
    let workloads = Workloads {
        single,
        copies,
        sorted,
        passages,
        heads,
    };
    if std::env::args().any(|a| a == "--commands") {
        serve_commands(&workloads, |spinning| {
            let heads = workloads.heads.iter();
            let heads = heads.map(|head| open(&head.onnx, spinning)).collect();
            (open(&onnx, spinning), heads)
        });
        return;
    }

    let mut report = json!({"single_tokens": workloads.single[0].len(), "modes": {}});
    for spinning in MODES {
        let mut session = open(&onnx, spinning);
        let mut figures = json!({});
        for workload in ["single", "batch32_same", "batch32_corpus", "passages16"] {
            figures[workload] = workloads.measure(workload, &mut session, budget);
        }
        drop(session);
        for head in &workloads.heads {
            let mut session = open(&head.onnx, spinning);
            figures[head.workload] = workloads.measure(head.workload, &mut session, budget);
        }
        report["modes"][spinning.to_string()] = figures;
    }
    let modes = report["modes"].as_object().expect("modes").clone();
    for (workload, _) in modes["always"].as_object().expect("figures") {
        report[workload] = best(&modes, workload);
    }
    println!("{report}");
}

const MODES: [Spinning; 3] = [Spinning::Always, Spinning::Adaptive, Spinning::Never];

/// What the engine runs: tokenized inputs of each workload.
struct Workloads {
    single: Vec<Vec<u32>>,
    copies: Vec<Vec<u32>>,
    sorted: Vec<Vec<u32>>,
    passages: Vec<Vec<u32>>,
    heads: Vec<Head>,
}

/// The `i`-th bench passage: every corpus sentence from the `i`-th on, then from the first,
/// joined by spaces (scripts/bench sends the same texts).
fn passage(corpus: &[&str], i: usize) -> String {
    let (head, tail) = corpus.split_at(i % corpus.len());
    [tail, head].concat().join(" ")
}

/// A model with a head: its workload's name, its model file, and its inputs' ids and segment
/// ids (a pair's; zeros without).
struct Head {
    workload: &'static str,
    onnx: std::path::PathBuf,
    ids: Vec<Vec<u32>>,
    types: Option<Vec<Vec<u32>>>,
}

impl Workloads {
    /// Runs `workload` on `session` (its head's, for a head's workload) for `budget`.
    fn measure(&self, workload: &str, session: &mut Session, budget: Duration) -> Value {
        match workload {
            "single" => measure(session, &self.single, budget),
            "batch32_same" => measure(session, &self.copies, budget),
            "batch32_corpus" => measure(session, &self.sorted, budget),
            "passages16" => measure(session, &self.passages, budget),
            _ => {
                let Head { ids, types, .. } = self.head(workload);
                measure_with(budget, ids.len(), || {
                    run_typed(session, ids, types.as_deref())
                })
            }
        }
    }

    fn head(&self, workload: &str) -> &Head {
        let mut heads = self.heads.iter();
        heads
            .find(|head| head.workload == workload)
            .unwrap_or_else(|| panic!("unknown workload {workload} (BENCH_HEADS unset?)"))
    }
}

/// `--commands`: every mode's sessions stay open, and each line on standard input,
/// `WORKLOAD MODE SECONDS`, is answered by one line of JSON with that measurement, so that
/// `scripts/bench` can measure the engine in short bursts right beside each server window
/// (this machine's speed drifts within tens of seconds). The first line says it is ready.
fn serve_commands(workloads: &Workloads, open: impl Fn(Spinning) -> (Session, Vec<Session>)) {
    let mut sessions: Vec<(Spinning, (Session, Vec<Session>))> =
        MODES.iter().map(|&mode| (mode, open(mode))).collect();
    let say = |line: Value| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .expect("stdout");
    };
    say(json!({"ready": true, "single_tokens": workloads.single[0].len()}));
    for line in std::io::stdin().lines() {
        let line = line.expect("stdin");
        let words: Vec<&str> = line.split_whitespace().collect();
        let [workload, mode, seconds] = words[..] else {
            panic!("expected `WORKLOAD MODE SECONDS`, got {line:?}")
        };
        let budget = Duration::from_secs_f64(seconds.parse().expect("seconds"));
        let (_, (session, heads)) = sessions
            .iter_mut()
            .find(|(m, _)| m.to_string() == mode)
            .unwrap_or_else(|| panic!("unknown mode {mode}"));
        let session = match workloads.heads.iter().position(|h| h.workload == workload) {
            Some(head) => &mut heads[head],
            None => session,
        };
        let mut figures = workloads.measure(workload, session, budget);
        figures["workload"] = json!(workload);
        figures["spinning"] = json!(mode);
        say(figures);
    }
}

/// A workload's best over the spinning modes: the highest rate, the lowest latencies, and
/// the mode that gave the rate.
fn best(modes: &serde_json::Map<String, Value>, workload: &str) -> Value {
    let figures = || modes.iter().map(|(mode, m)| (mode, &m[workload]));
    let number = |v: &Value, key: &str| v[key].as_f64().expect("a number");
    let (mode, fastest) = figures()
        .max_by(|a, b| number(a.1, "inputs_per_s").total_cmp(&number(b.1, "inputs_per_s")))
        .expect("modes");
    let least = |key: &str| {
        figures()
            .map(|(_, m)| number(m, key))
            .fold(f64::INFINITY, f64::min)
    };
    json!({
        "inputs_per_s": number(fastest, "inputs_per_s"),
        "p50_ms": least("p50_ms"),
        "p99_ms": least("p99_ms"),
        "spinning": mode,
    })
}

/// Runs `batch` repeatedly for `budget` (at least once) and reports inputs/s and latency.
fn measure(session: &mut Session, batch: &[Vec<u32>], budget: Duration) -> serde_json::Value {
    measure_with(budget, batch.len(), || run_typed(session, batch, None))
}

/// Runs `run` (one batch of `rows` inputs) repeatedly for `budget`, at least once.
fn measure_with(budget: Duration, rows: usize, mut run: impl FnMut()) -> serde_json::Value {
    run(); // warm-up
    let mut latencies = Vec::new();
    let started = Instant::now();
    while latencies.is_empty() || started.elapsed() < budget {
        let t = Instant::now();
        run();
        latencies.push(t.elapsed());
    }
    let total = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct =
        |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    json!({
        "runs": latencies.len(),
        "inputs_per_s": (latencies.len() * rows) as f64 / total,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    })
}

/// One run over `batch`, right-padded; segment ids are `types` (a pair's), else zeros.
fn run_typed(session: &mut Session, batch: &[Vec<u32>], types: Option<&[Vec<u32>]>) {
    let rows = batch.len();
    let cols = batch.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![0i64; rows * cols];
    let mut mask = vec![0i64; rows * cols];
    for (r, seq) in batch.iter().enumerate() {
        for (c, &id) in seq.iter().enumerate() {
            ids[r * cols + c] = i64::from(id);
            mask[r * cols + c] = 1;
        }
    }
    let mut segments = vec![0i64; rows * cols];
    for (r, row) in types.unwrap_or_default().iter().enumerate() {
        for (c, &t) in row.iter().enumerate() {
            segments[r * cols + c] = i64::from(t);
        }
    }
    let names: Vec<String> = session
        .inputs()
        .iter()
        .map(|i| i.name().to_string())
        .collect();
    let inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = names
        .iter()
        .map(|name| {
            let data: &[i64] = match name.as_str() {
                "input_ids" => &ids,
                "attention_mask" => &mask,
                _ => &segments,
            };
            (
                Cow::Owned(name.clone()),
                TensorRef::from_array_view(([rows, cols], data))
                    .unwrap()
                    .into(),
            )
        })
        .collect();
    let outputs = session.run(inputs).expect("run");
    std::hint::black_box(outputs);
}
