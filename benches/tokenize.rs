//! What tokenizing one request costs on all-MiniLM-L6-v2: the server's tokenizer
//! (`TextTokenizer`, with its ASCII fast path for BERT WordPiece) against the tokenizers
//! crate configured the same way, on one corpus sentence and on the 32 corpus sentences;
//! and a rerank request's pairs on the BERT cross-encoder fixture (each text tokenized once,
//! against each pair tokenized whole), for a sentence and for a 16 KiB query.
//! "cold" sweeps 64 MiB of memory before each call, as an inference run does to the caches
//! between two requests; "warm" repeats the call back to back. Prints medians in µs.
//!
//! `cargo bench --bench tokenize`; under `cargo test` it runs a few iterations as a smoke test.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use embedserve::model::{TextPreparation, TextTokenizer, TruncationDirection};
use tokenizers::{Tokenizer, TruncationParams};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (warm_runs, cold_runs) = if full { (20_000, 400) } else { (10, 2) };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/sentence-transformers/all-MiniLM-L6-v2");
    let preparation = TextPreparation::Transformer {
        max_seq_length: 256,
        do_lower_case: false,
    };
    let server = TextTokenizer::load(&dir.join("tokenizer.json"), preparation).expect("tokenizer");
    let mut crate_tokenizer = Tokenizer::from_file(dir.join("tokenizer.json")).expect("tokenizer");
    crate_tokenizer.with_padding(None);
    crate_tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: 256,
            ..TruncationParams::default()
        }))
        .expect("truncation");

    let corpus: Vec<String> = include_str!("corpus.txt")
        .lines()
        .map(String::from)
        .collect();
    let single = corpus[..1].to_vec();
    // The same ids both ways, or the comparison means nothing.
    for text in &corpus {
        let ours = server
            .encode_batch(std::slice::from_ref(text))
            .expect("encode");
        let theirs = crate_tokenizer
            .encode_fast(text.as_str(), true)
            .expect("encode");
        assert_eq!(ours[0].ids, theirs.get_ids(), "{text}");
    }

    let mut sweep = vec![0u8; 64 << 20];
    println!("{:<34} {:>10} {:>10}", "median µs", "warm", "cold");
    for (name, texts) in [("1 sentence", &single), ("32 sentences", &corpus)] {
        let crate_encode = || {
            for text in texts.iter() {
                black_box(
                    crate_tokenizer
                        .encode_fast(text.as_str(), true)
                        .expect("encode"),
                );
            }
        };
        let server_encode = || {
            black_box(server.encode_batch(texts).expect("encode"));
        };
        for (who, encode) in [
            ("tokenizers crate", &crate_encode as &dyn Fn()),
            ("embedserve", &server_encode),
        ] {
            let warm = median(warm_runs, || time(encode));
            let cold = median(cold_runs, || {
                for i in (0..sweep.len()).step_by(64) {
                    sweep[i] = sweep[i].wrapping_add(1);
                }
                time(encode)
            });
            println!(
                "{:<34} {:>10.1} {:>10.1}",
                format!("{name}, {who}"),
                warm.as_secs_f64() * 1e6,
                cold.as_secs_f64() * 1e6
            );
        }
    }
    black_box(&sweep);
    pairs(&corpus, if full { 200 } else { 2 });
}

/// A rerank request's pairs: one query with the 32 corpus sentences, both ways.
fn pairs(corpus: &[String], runs: usize) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/models/rerank/bert-cross-encoder/tokenizer.json");
    let preparation = TextPreparation::Transformer {
        max_seq_length: 512,
        do_lower_case: false,
    };
    let server = TextTokenizer::load(&path, preparation).expect("tokenizer");
    let mut whole = Tokenizer::from_file(&path).expect("tokenizer");
    whole.with_padding(None);
    whole
        .with_truncation(Some(TruncationParams {
            max_length: 512,
            ..TruncationParams::default()
        }))
        .expect("truncation");
    let documents: Vec<std::borrow::Cow<str>> = corpus.iter().map(|d| d.as_str().into()).collect();
    let long_query = corpus
        .join(" ")
        .repeat(16 * 1024 / corpus.join(" ").len() + 1);
    for (name, query) in [
        ("a sentence", corpus[0].as_str()),
        ("16 KiB", long_query.as_str()),
    ] {
        let ours = server
            .encode_pairs(query, &documents, None, TruncationDirection::Right)
            .expect("pairs");
        for (document, pair) in corpus.iter().zip(&ours) {
            let theirs = whole
                .encode_fast((query, document.as_str()), true)
                .expect("pair");
            assert_eq!(pair.ids, theirs.get_ids(), "{document}");
        }
        let crate_pairs = || {
            for document in corpus {
                black_box(
                    whole
                        .encode_fast((query, document.as_str()), true)
                        .expect("pair"),
                );
            }
        };
        let server_pairs = || {
            black_box(
                server
                    .encode_pairs(query, &documents, None, TruncationDirection::Right)
                    .expect("pairs"),
            );
        };
        for (who, encode) in [
            ("each pair whole", &crate_pairs as &dyn Fn()),
            ("embedserve", &server_pairs),
        ] {
            let took = median(runs, || time(encode));
            println!(
                "{:<45} {:>10.1}",
                format!("32 pairs, query {name}, {who}"),
                took.as_secs_f64() * 1e6
            );
        }
    }
}

fn time(run: &dyn Fn()) -> Duration {
    let started = Instant::now();
    run();
    started.elapsed()
}

fn median(runs: usize, mut measure: impl FnMut() -> Duration) -> Duration {
    let mut times: Vec<Duration> = (0..runs).map(|_| measure()).collect();
    times.sort();
    times[times.len() / 2]
}
