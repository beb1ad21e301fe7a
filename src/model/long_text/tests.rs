//! Every distinct tokenizer among the test models: the bounded text must give exactly the
//! ids (and the overflow) of the whole text, for texts built to break each rule.

use super::{Shortening, bounded, shorten_runs};
use crate::model::test_tokenizers::{configured, fixture_tokenizers};

const MAX_LENGTH: usize = 64;
/// Small, so the texts that overflow it stay quick to tokenize whole in a debug build.
const WINDOW: usize = 1024;

fn hostile_texts() -> Vec<(&'static str, String)> {
    let prose = "Antidisestablishmentarianism notwithstanding, the quick brown fox jumps over \
                 the lazy dog; pneumonoultramicroscopicsilicovolcanoconiosis! ";
    let endless = "a".repeat(6 * WINDOW);
    vec![
        ("prose cut mid-word", prose.repeat(40)),
        (
            "CJK without spaces",
            "漢字仮名交じり文の長い段落".repeat(300),
        ),
        ("one endless word", endless.clone()),
        (
            "an endless word, then words",
            format!("{endless} then some words {prose}"),
        ),
        (
            "words, an endless word, words",
            format!("a few words {endless}. {prose}"),
        ),
        (
            "long words, each one [UNK]",
            format!("{} ", "b".repeat(150)).repeat(100),
        ),
        ("an endless run of punctuation", "!".repeat(6 * WINDOW)),
        (
            "whitespace, then words",
            format!("{}{prose}", " \n\t".repeat(3 * WINDOW)),
        ),
        (
            "newlines between words",
            "word\n\n\t  other\r\n".repeat(400),
        ),
        (
            "combining accents",
            "e\u{301}te\u{301} ca\u{300}fe\u{301} ".repeat(400),
        ),
        (
            "digits and symbols",
            "3.14159€ 2718281828459045 ".repeat(300),
        ),
        ("emoji", "🙂🙃 🎉".repeat(1000)),
        ("mixed scripts", "Привет мир 世界 مرحبا ".repeat(300)),
    ]
}

#[test]
fn bounded_texts_tokenize_like_the_whole_text() {
    let mut failures = Vec::new();
    for path in fixture_tokenizers().values() {
        let tokenizer = configured(path, Some(MAX_LENGTH));
        let shortening = Shortening::for_tokenizer(&tokenizer);
        for (case, text) in hostile_texts() {
            let short = bounded(&tokenizer, &shortening, &text, WINDOW).unwrap();
            let whole = tokenizer.encode_fast(text.as_str(), true).unwrap();
            let cut = tokenizer.encode_fast(short.as_ref(), true).unwrap();
            if cut.get_ids() != whole.get_ids()
                || cut.get_overflowing().is_empty() != whole.get_overflowing().is_empty()
            {
                failures.push(format!(
                    "{case}: {path:?} ({} of {} bytes kept)\n  bounded {:?}\n  whole   {:?}",
                    short.len(),
                    text.len(),
                    cut.get_ids(),
                    whole.get_ids()
                ));
            }
            assert!(
                short.len() <= (WINDOW << super::DOUBLINGS) + 4,
                "{case}: {path:?} kept {} bytes",
                short.len()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn short_texts_are_left_alone() {
    let text = "short enough";
    let path = fixture_tokenizers().into_values().next().unwrap();
    let tokenizer = configured(&path, Some(MAX_LENGTH));
    assert!(matches!(
        bounded(&tokenizer, &Shortening::default(), text, WINDOW).unwrap(),
        std::borrow::Cow::Borrowed(t) if t == text
    ));
}

#[test]
fn runs_are_shortened_to_the_kept_characters() {
    let bert = Shortening {
        word_chars: Some(3),
        whitespace: vec![' ', '\n'],
    };
    assert_eq!(shorten_runs("abcdef gh", &bert, 100), "abc gh");
    assert_eq!(shorten_runs("ab  \n cd", &bert, 100), "ab cd");
    assert_eq!(shorten_runs("漢字漢字", &bert, 100), "漢字漢字");
    assert_eq!(shorten_runs("ab, cd", &bert, 100), "ab, cd");
    assert_eq!(shorten_runs(&"x".repeat(50), &bert, 100), "xxx");
    let long = format!("{} {}", "x".repeat(10), "xy ".repeat(100));
    assert_eq!(shorten_runs(&long, &bert, 10), "xxx xy xy x");
    let spaces_only = Shortening {
        word_chars: None,
        whitespace: vec![' ', '\n'],
    };
    // A tab is not folded here, so it ends the run.
    assert_eq!(
        shorten_runs("abcdef  \t\n gh", &spaces_only, 100),
        "abcdef \t\ngh"
    );
}
