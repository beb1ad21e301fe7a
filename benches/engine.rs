//! The engine ceiling: the bare ONNX Runtime session, no server, on all-MiniLM-L6-v2 fp32
//! with the server's session options. Measures single sentences one run at a time, batches
//! of 32 copies of that sentence, and the 32 corpus sentences sorted by length in one run.
//! Prints one JSON object; `scripts/bench` compares the server against it.
//!
//! `cargo bench --bench engine` (BENCH_SECONDS per measurement, default 5); under `cargo
//! test` it runs each measurement once as a smoke test.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use embedserve::config::RuntimeConfig;
use embedserve::runtime::{Device, Runtime};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use serde_json::json;
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
    let (mut builder, _) = runtime
        .session_builder(Device::Cpu, None)
        .expect("session options");
    let mut session = builder
        .commit_from_file(dir.join("onnx/model.onnx"))
        .expect("session");
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
    let copies = vec![single[0].clone(); 32];
    let mut sorted: Vec<Vec<u32>> = corpus.iter().map(|t| encode(t)).collect();
    sorted.sort_by_key(Vec::len);

    let mut report = json!({
        "single": measure(&mut session, &single, budget),
        "batch32_same": measure(&mut session, &copies, budget),
        "batch32_corpus": measure(&mut session, &sorted, budget),
        "single_tokens": single[0].len(),
    });
    // A cross-encoder (scripts/make-bench-reranker): 32 pairs of the first sentence with
    // the first 8 corpus sentences (the bench's rerank request), 4 times over, tokenized as
    // pairs and sorted by length, in one run.
    if let Some(reranker) = std::env::var_os("BENCH_RERANKER") {
        let reranker = Path::new(&reranker);
        let mut session = runtime
            .session_builder(Device::Cpu, None)
            .expect("session options")
            .0
            .commit_from_file(reranker.join("onnx/model.onnx"))
            .expect("reranker session");
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
        let (ids, types): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
        report["rerank_batch32"] = measure_with(budget, ids.len(), || {
            run_typed(&mut session, &ids, Some(&types))
        });
    }
    println!("{report}");
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
