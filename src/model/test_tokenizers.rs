//! The test models' tokenizers, for tests that must hold for every one of them.

use std::collections::BTreeMap;
use std::path::PathBuf;

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
