//! The fast path against the tokenizers crate, on every distinct tokenizer among the test
//! models: it must engage for each BERT WordPiece one, give the crate's ids and truncation on
//! texts built to hit each rule, and stand aside where it cannot.

use tokenizers::Tokenizer;

use super::AsciiWordPiece;
use crate::model::test_tokenizers::{configured, fixture_tokenizers};

fn is_bert_wordpiece(json: &[u8]) -> bool {
    let json: serde_json::Value = serde_json::from_slice(json).unwrap();
    json["normalizer"]["type"] == "BertNormalizer"
        && json["normalizer"]["clean_text"] == true
        && json["pre_tokenizer"]["type"] == "BertPreTokenizer"
        && json["model"]["type"] == "WordPiece"
}

/// Deterministic texts from fragments that each exercise a rule: words in and out of the
/// vocabulary, capitals, digits, every ASCII punctuation mark, each kind of whitespace and
/// control character, continuation markers, brackets that nearly spell an added token, and
/// words past `max_input_chars_per_word`.
fn texts() -> Vec<String> {
    let corpus = include_str!("../../../benches/corpus.txt");
    let words: Vec<&str> = corpus.split_whitespace().collect();
    let fragments: Vec<String> = [
        " ",
        " ",
        " ",
        "  ",
        "\t",
        "\n",
        "\r\n",
        "\u{b}",
        "\u{c}",
        "\u{0}",
        "\u{7}",
        "\u{1b}",
        "\u{1f}",
        "\u{7f}",
        "##",
        "#",
        "[",
        "]",
        "[MAS",
        "K]",
        "[UNK",
        "Ünï",
        "ABC",
        "Qu",
        "xylophonist",
        "zzqjx",
        "42",
        "3.14",
        "e.g.",
        "don't",
        "U.S.A.",
        "--",
        "...",
        "@user",
        "a+b=c",
        "<tag>",
        "$5",
        "100%",
        "~^`|\\{}",
        "\"quoted\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain((0..=0x7fu8).map(|b| (b as char).to_string()))
    .chain([
        "x".repeat(99),
        "y".repeat(100),
        "z".repeat(101),
        "ab".repeat(60),
    ])
    .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut texts: Vec<String> = corpus.lines().map(str::to_string).collect();
    texts.extend(["".to_string(), " ".to_string(), "\t\n".to_string()]);
    for _ in 0..600 {
        let mut text = String::new();
        for _ in 0..1 + next(40) {
            if next(3) == 0 {
                text.push_str(&fragments[next(fragments.len())]);
            } else {
                let word = words[next(words.len())];
                if next(4) == 0 {
                    text.push_str(&word.to_uppercase());
                } else {
                    text.push_str(word);
                }
                text.push(' ');
            }
        }
        texts.push(text);
    }
    texts
}

#[test]
fn gives_the_crates_ids_and_truncation_for_every_bert_tokenizer() {
    let texts = texts();
    let mut checked = 0;
    for (json, path) in fixture_tokenizers() {
        let bert = is_bert_wordpiece(&json);
        for max_length in [None, Some(16), Some(128)] {
            let tokenizer = configured(&path, max_length);
            let Some(fast) = AsciiWordPiece::new(&tokenizer) else {
                assert!(
                    !bert,
                    "{path:?} is BERT WordPiece, yet the fast path stood aside"
                );
                continue;
            };
            assert!(
                bert,
                "{path:?} is not BERT WordPiece, yet the fast path took it"
            );
            for text in &texts {
                for special in [true, false] {
                    let expected = tokenizer.encode_fast(text.as_str(), special).unwrap();
                    match fast.encode(text, special) {
                        Some(got) => {
                            assert_eq!(
                                got.ids,
                                expected.get_ids(),
                                "{path:?}, max_length {max_length:?}, special tokens \
                                 {special}: {text:?}"
                            );
                            assert_eq!(
                                got.truncated,
                                !expected.get_overflowing().is_empty(),
                                "{path:?}: {text:?}"
                            );
                            checked += 1;
                        }
                        None => assert!(
                            !text.is_ascii() || text.contains("[UNK") || text.contains("[MAS"),
                            "{path:?}: the fast path refused plain ASCII {text:?}"
                        ),
                    }
                }
            }
        }
    }
    assert!(checked > 10_000, "only {checked} texts compared");
}

#[test]
fn stands_aside_for_other_characters_and_added_tokens() {
    let path = fixture_tokenizers()
        .into_iter()
        .find(|(json, _)| is_bert_wordpiece(json))
        .expect("a BERT tokenizer among the test models")
        .1;
    let fast = AsciiWordPiece::new(&configured(&path, Some(128))).unwrap();
    for text in [
        "naïve café",
        "漢字",
        "ask [MASK] here",
        "[CLS] again",
        "x[SEP]",
    ] {
        assert!(fast.encode(text, true).is_none(), "{text:?}");
    }
    for text in ["[cls] is text here", "a [ b ] c", "plain words"] {
        assert!(fast.encode(text, true).is_some(), "{text:?}");
    }
}

/// A vocabulary without every continuation: a word that can be pieced only in part is one
/// unknown token, as the crate has it.
#[test]
fn a_word_pieced_only_in_part_is_unknown_whole() {
    let vocab = [
        "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "a", "##b", "x",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id.into()))
        .collect();
    let json = serde_json::json!({
        "version": "1.0",
        "added_tokens": [],
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    });
    let tokenizer: Tokenizer = json.to_string().parse().unwrap();
    let fast = AsciiWordPiece::new(&tokenizer).expect("a BERT recipe");
    for text in [
        "unaffable",
        "unaffablex",
        "unaffable x",
        "abb abx",
        "xun",
        "x",
    ] {
        let expected = tokenizer.encode_fast(text, true).unwrap();
        assert_eq!(
            fast.encode(text, true).unwrap().ids,
            expected.get_ids(),
            "{text:?}"
        );
    }
    let unknown = fast.encode("unaffablex", false).unwrap().ids;
    assert_eq!(unknown, [0], "one [UNK] for the whole word");
}
