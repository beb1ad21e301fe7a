//! Every distinct tokenizer among the test models: the bounded text must give exactly the
//! ids (and the overflow) of the whole text, for texts built to break each rule.

use tokenizers::{Tokenizer, TruncationDirection};

use super::{End, Shortening, bounded, bounded_suffix, shorten_runs};
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
        ("words, then an endless word", format!("{prose}{endless}")),
        (
            "words, then whitespace",
            format!("{prose}{}", " \n\t".repeat(3 * WINDOW)),
        ),
        ("mixed scripts", "Привет мир 世界 مرحبا ".repeat(300)),
    ]
}

/// For every fixture tokenizer and hostile text: the text `bound` keeps must tokenize (with
/// the tokenizer `cut_by` makes of the fixture's) to exactly the ids and the overflow of the
/// whole text, within `WINDOW << DOUBLINGS` bytes.
fn assert_bounded_like_whole(
    cut_by: impl Fn(&Tokenizer) -> Tokenizer,
    bound: impl for<'t> Fn(&Tokenizer, &Shortening, &'t str) -> std::borrow::Cow<'t, str>,
) {
    let mut failures = Vec::new();
    for path in fixture_tokenizers().values() {
        let tokenizer = configured(path, Some(MAX_LENGTH));
        let cutting = cut_by(&tokenizer);
        let shortening = Shortening::for_tokenizer(&tokenizer);
        for (case, text) in hostile_texts() {
            let short = bound(&tokenizer, &shortening, &text);
            let whole = cutting.encode_fast(text.as_str(), true).unwrap();
            let cut = cutting.encode_fast(short.as_ref(), true).unwrap();
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
fn bounded_texts_tokenize_like_the_whole_text() {
    assert_bounded_like_whole(Tokenizer::clone, |tokenizer, shortening, text| {
        bounded(tokenizer, shortening, text, WINDOW).unwrap()
    });
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
    assert_eq!(shorten_runs("abcdef gh", &bert, 100, End::Start), "abc gh");
    assert_eq!(shorten_runs("ab  \n cd", &bert, 100, End::Start), "ab cd");
    assert_eq!(shorten_runs("漢字漢字", &bert, 100, End::Start), "漢字漢字");
    assert_eq!(shorten_runs("ab, cd", &bert, 100, End::Start), "ab, cd");
    assert_eq!(shorten_runs(&"x".repeat(50), &bert, 100, End::Start), "xxx");
    let long = format!("{} {}", "x".repeat(10), "xy ".repeat(100));
    assert_eq!(shorten_runs(&long, &bert, 10, End::Start), "xxx xy xy x");
    let spaces_only = Shortening {
        word_chars: None,
        whitespace: vec![' ', '\n'],
    };
    // A tab is not folded here, so it ends the run.
    assert_eq!(
        shorten_runs("abcdef  \t\n gh", &spaces_only, 100, End::Start),
        "abcdef \t\ngh"
    );
}

#[test]
fn runs_are_shortened_from_the_finish_to_their_last_characters() {
    let bert = Shortening {
        word_chars: Some(3),
        whitespace: vec![' ', '\n'],
    };
    let from_finish =
        |text: &str, limit| shorten_runs(text, &bert, limit, End::Finish).into_owned();
    assert_eq!(from_finish("abcdef gh", 100), "def gh");
    assert_eq!(from_finish("ab  \n cd", 100), "ab cd");
    assert_eq!(from_finish("ab, cd", 100), "ab, cd");
    let long = format!("{} {}", "xy ".repeat(100), "x".repeat(10));
    assert_eq!(from_finish(&long, 10), "y xy xy xxx");
}

/// `bounded_suffix` keeps the last tokens: a suffix tokenized with truncation from the start
/// gives exactly the ids (and the overflow) of the whole text, for every hostile text.
#[test]
fn bounded_suffixes_tokenize_like_the_whole_text_truncated_from_the_start() {
    assert_bounded_like_whole(from_start, |tokenizer, shortening, text| {
        let kept = MAX_LENGTH
            - tokenizer
                .get_post_processor()
                .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        bounded_suffix(tokenizer, shortening, ("", text), WINDOW, kept).unwrap()
    });
}

/// Some runs are tokenized in groups counted from their start (BPE merges pairs of one
/// letter, Qwen's pre-tokenizer splits digits in threes, dashes merge in threes), so their
/// last tokens depend on the run's length: no suffix is accepted there, and the text is cut
/// at the last window (the documented exception), unless the ids come out right.
#[test]
fn suffixes_of_runs_counted_from_their_start_are_not_accepted_early() {
    for path in fixture_tokenizers().values() {
        let tokenizer = configured(path, Some(MAX_LENGTH));
        let from_start = from_start(&tokenizer);
        for unit in ["a", "0", "-", "="] {
            for extra in 0..3 {
                let text = format!("{}{}", unit.repeat(6 * WINDOW), &"qq"[..extra]);
                let short =
                    bounded_suffix(&tokenizer, &Shortening::default(), ("", &text), WINDOW, 60)
                        .unwrap();
                let whole = from_start.encode_fast(text.as_str(), false).unwrap();
                let cut = from_start.encode_fast(short.as_ref(), false).unwrap();
                assert!(
                    cut.get_ids() == whole.get_ids()
                        || short.len() >= (WINDOW << super::DOUBLINGS) - 4,
                    "{path:?}, {unit:?} + {extra}: {} bytes kept, ids {:?}, whole {:?}",
                    short.len(),
                    cut.get_ids(),
                    whole.get_ids()
                );
            }
        }
    }
}

fn from_start(tokenizer: &Tokenizer) -> Tokenizer {
    let mut from_start = tokenizer.clone();
    let mut params = tokenizer.get_truncation().unwrap().clone();
    params.direction = TruncationDirection::Left;
    from_start.with_truncation(Some(params)).unwrap();
    from_start
}
