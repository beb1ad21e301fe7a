//! The test models' tokenizers, for tests that must hold for every one of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

/// Every distinct `tokenizer.json` under ../shared/models (by content), with one path to it.
pub fn fixture_tokenizers() -> BTreeMap<Vec<u8>, PathBuf> {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models");
    let mut distinct = BTreeMap::new();
    for group in std::fs::read_dir(&models).expect("../shared/models") {
        let Ok(group) = std::fs::read_dir(group.unwrap().path()) else {
            continue;
        };
        for model in group {
            let path = model.unwrap().path().join("tokenizer.json");
            if let Ok(bytes) = std::fs::read(&path) {
                distinct.entry(bytes).or_insert(path);
            }
        }
    }
    assert!(distinct.len() >= 5, "too few tokenizers under {models:?}");
    distinct
}

/// The tokenizer at `path` set up as `TextTokenizer` sets it up: no padding, and truncation
/// at `max_length` (longest first, on the right, no stride) or none.
pub fn configured(path: &Path, max_length: Option<usize>) -> Tokenizer {
    let mut tokenizer = Tokenizer::from_file(path).unwrap();
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(max_length.map(|max_length| TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .unwrap();
    tokenizer
}
