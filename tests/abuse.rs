//! Hostile and careless clients: what one request may cost, connections that never finish,
//! loads abandoned by their requesters, and shutdown under load. Each test reproduces an
//! attack that once exhausted the server.

mod common;

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

/// A long text costs what is embedded: its first `max_seq_length` tokens. Tokenizing 4 MiB
/// of `!` whole took 1.6 GB and seconds of CPU; its vector is the one of a text just long
/// enough to be truncated at the same token.
#[test]
fn long_inputs_cost_what_is_embedded_and_keep_their_vectors() {
    let server = server(&[]);
    let endless = "a".repeat(4 << 20);
    let prose = "Antidisestablishmentarianism notwithstanding, the quick brown fox jumps over \
                 the lazy dog again. ";
    let cases = [
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
    server.embed(MINILM, json!("warm up"), json!({}));
    let before = server.peak_resident_bytes();
    for (case, long, short) in cases {
        let long_vector = server.embed(MINILM, json!(long), json!({}));
        let short_vector = server.embed(MINILM, json!(short), json!({}));
        let similarity = cosine(&long_vector[0], &short_vector[0]);
        assert!(similarity >= 0.99999, "{case}: cosine {similarity}");
        // With truncation off, the refusal comes as fast.
        let (status, body) = server.post_json(
            "/v1/embeddings",
            &json!({"model": MINILM, "input": long, "truncate": false}),
        );
        assert_error(status, &body, 400, None);
        assert_eq!(body["error"]["param"], "input", "{case}: {body}");
    }
    let grown = server.peak_resident_bytes().saturating_sub(before);
    assert!(
        grown < 96 * MIB,
        "four 4 MiB inputs raised peak memory by {} MiB",
        grown / MIB
    );
}
