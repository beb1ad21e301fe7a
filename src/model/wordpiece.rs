//! BERT's WordPiece tokenizers (`BertNormalizer`, `BertPreTokenizer`, `WordPiece`, as most
//! sentence-transformers models ship them) on ASCII text, with the same ids and truncation
//! as the tokenizers crate. The crate tracks every byte's alignment through a Unicode
//! normalizer and looks each character's category up in tables: for a 12-word sentence that
//! is 27 µs with warm caches and 131 µs just after an inference run has flushed them, on a
//! request's critical path; here it is 0.9 and 25 µs (`cargo bench --bench tokenize`). On
//! ASCII text that work reduces to a few byte tests and a hash lookup per piece. Anything
//! else (other characters, an added token such as `[MASK]` in the text, another tokenizer
//! recipe) returns `None` and goes through the crate.

use std::collections::HashMap;

use foldhash::fast::RandomState;
use memchr::memmem::Finder;
use tokenizers::{
    Model, ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, Tokenizer, TruncationDirection,
    TruncationStrategy,
};

use super::tokenize::Encoded;

type Vocab = HashMap<Box<[u8]>, u32, RandomState>;

pub struct AsciiWordPiece {
    lowercase: bool,
    /// Vocabulary entries that may start a word, and those that continue one (stored without
    /// the continuing-subword prefix), with the longest key of each.
    starts: Vocab,
    longest_start: usize,
    continuations: Vocab,
    longest_continuation: usize,
    unk: u32,
    max_word_bytes: usize,
    /// Special tokens the post-processor puts around a text, and the text tokens kept under
    /// truncation, with and without them.
    prefix: Vec<u32>,
    suffix: Vec<u32>,
    max_tokens: Option<usize>,
    max_tokens_with_specials: Option<usize>,
    /// Added tokens (`[CLS]`, `[MASK]`, ...): the crate finds them before anything else, in
    /// the text as sent or (for `normalized` ones) as normalized, so a text that holds one
    /// is left to it.
    added_raw: Vec<Finder<'static>>,
    added_normalized: Vec<Finder<'static>>,
}

impl AsciiWordPiece {
    /// The fast path for `tokenizer` as configured (truncation included), or `None` when its
    /// recipe is not BERT's or the fast path does not reproduce it on probe texts.
    pub fn new(tokenizer: &Tokenizer) -> Option<Self> {
        let normalizer = match tokenizer.get_normalizer() {
            Some(NormalizerWrapper::BertNormalizer(normalizer)) => normalizer,
            _ => return None,
        };
        let ModelWrapper::WordPiece(model) = tokenizer.get_model() else {
            return None;
        };
        let bert_words = matches!(
            tokenizer.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::BertPreTokenizer(_))
        );
        let added_tokens = tokenizer.get_added_tokens_decoder();
        if !bert_words
            || !normalizer.clean_text
            || !model.continuing_subword_prefix.is_ascii()
            || tokenizer.get_padding().is_some()
            || added_tokens.values().any(|t| !t.content.is_ascii())
        {
            return None;
        }
        let (starts, continuations) = split_vocabulary(model);
        let specials = tokenizer.encode_fast("", true).ok()?.get_ids().to_vec();
        let (max_tokens, max_tokens_with_specials) = match tokenizer.get_truncation() {
            None => (None, None),
            Some(t) => {
                let single_text = matches!(
                    t.strategy,
                    TruncationStrategy::LongestFirst | TruncationStrategy::OnlyFirst
                );
                // Below one token the crate's own arithmetic is an edge this path leaves it.
                if !single_text
                    || t.direction != TruncationDirection::Right
                    || t.stride != 0
                    || t.max_length <= specials.len()
                {
                    return None;
                }
                (Some(t.max_length), Some(t.max_length - specials.len()))
            }
        };
        let longest = |vocab: &Vocab| vocab.keys().map(|k| k.len()).max().unwrap_or(0);
        let mut fast = Self {
            lowercase: normalizer.lowercase,
            longest_start: longest(&starts),
            longest_continuation: longest(&continuations),
            starts,
            continuations,
            unk: model.token_to_id(&model.unk_token)?,
            max_word_bytes: model.max_input_chars_per_word,
            prefix: Vec::new(),
            suffix: Vec::new(),
            max_tokens,
            max_tokens_with_specials,
            added_raw: Vec::new(),
            added_normalized: Vec::new(),
        };
        for token in added_tokens.values().filter(|t| !t.content.is_empty()) {
            if token.normalized {
                let content = fast.normalize(&token.content);
                fast.added_normalized
                    .push(Finder::new(&content).into_owned());
            } else {
                let content = token.content.as_bytes();
                fast.added_raw.push(Finder::new(content).into_owned());
            }
        }
        (fast.prefix, fast.suffix) = fast.specials_around_text(tokenizer, &specials)?;
        fast.reproduces(tokenizer).then_some(fast)
    }

    /// The special tokens the post-processor puts before and after a text (`specials` in
    /// all): found around a one-token word that is not one of them.
    fn specials_around_text(
        &self,
        tokenizer: &Tokenizer,
        specials: &[u32],
    ) -> Option<(Vec<u32>, Vec<u32>)> {
        let (word, &id) = self
            .starts
            .iter()
            .filter(|(word, id)| word.iter().all(u8::is_ascii_lowercase) && !specials.contains(id))
            .min_by_key(|(word, _)| (word.len(), *word))?;
        let probe = tokenizer
            .encode_fast(std::str::from_utf8(word).ok()?, true)
            .ok()?;
        let ids = probe.get_ids();
        let at = ids.iter().position(|&i| i == id)?;
        let (before, after) = (ids[..at].to_vec(), ids[at + 1..].to_vec());
        ([&before[..], &after[..]].concat() == specials).then_some((before, after))
    }

    /// Whether this path gives the crate's ids on texts that exercise each of its steps.
    fn reproduces(&self, tokenizer: &Tokenizer) -> bool {
        let long = "tokenization ".repeat(self.max_tokens.unwrap_or(64) + 1);
        let probes = [
            "",
            "Hello, World! It's 3.14 degrees\tand\r\nrising...",
            "a  b \u{7}c\u{0}d\u{b}e\u{1f}f\u{7f}g",
            "UNAFFABLE unaffable xyzzyplugh ##ing [ ] {}~`|^",
            &"x".repeat(self.max_word_bytes + 1),
            &long,
        ];
        probes.iter().all(|text| {
            [true, false].iter().all(|&special| {
                tokenizer.encode_fast(*text, special).is_ok_and(|expected| {
                    self.encode(text, special).is_some_and(|got| {
                        got.ids == expected.get_ids()
                            && got.truncated != expected.get_overflowing().is_empty()
                    })
                })
            })
        })
    }

    /// `text` as `tokenizer.encode_fast(text, add_special_tokens)` encodes it, or `None` when
    /// it is not ASCII or holds an added token.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Option<Encoded> {
        if !text.is_ascii() {
            return None;
        }
        let normalized = self.normalize(text);
        let holds = |added: &[Finder], text: &[u8]| added.iter().any(|a| a.find(text).is_some());
        if holds(&self.added_raw, text.as_bytes()) || holds(&self.added_normalized, &normalized) {
            return None;
        }
        let (prefix, suffix, max_tokens): (&[u32], &[u32], _) = if add_special_tokens {
            (&self.prefix, &self.suffix, self.max_tokens_with_specials)
        } else {
            (&[], &[], self.max_tokens)
        };
        let max_tokens = max_tokens.unwrap_or(usize::MAX);
        let mut ids = Vec::with_capacity(prefix.len() + normalized.len() / 3 + suffix.len() + 2);
        ids.extend_from_slice(prefix);
        let kept = prefix.len().saturating_add(max_tokens);
        // BertPreTokenizer: words split at spaces, each punctuation character a word alone.
        'words: for chunk in normalized.split(|&b| b == b' ') {
            for word in chunk.split_inclusive(u8::is_ascii_punctuation) {
                let (head, punctuation) = match word.split_last() {
                    Some((last, head)) if last.is_ascii_punctuation() => {
                        (head, Some(std::slice::from_ref(last)))
                    }
                    _ => (word, None),
                };
                for piece in std::iter::once(head).chain(punctuation) {
                    self.word_pieces(piece, &mut ids);
                    // One token past the limit settles that the text is cut.
                    if ids.len() > kept {
                        break 'words;
                    }
                }
            }
        }
        let truncated = ids.len() > kept;
        ids.truncate(kept);
        ids.extend_from_slice(suffix);
        Some(Encoded {
            ids,
            type_ids: Vec::new(),
            truncated,
        })
    }

    /// BertNormalizer on ASCII: control characters dropped, tabs and line breaks made spaces,
    /// letters lower-cased when the model says so (accents and CJK need no work).
    fn normalize(&self, text: &str) -> Vec<u8> {
        text.bytes()
            .filter_map(|b| match b {
                b'\t' | b'\n' | b'\r' => Some(b' '),
                0..=0x1f | 0x7f => None,
                _ if self.lowercase => Some(b.to_ascii_lowercase()),
                _ => Some(b),
            })
            .collect()
    }

    /// WordPiece: the longest vocabulary entry at each point, the whole word unknown when
    /// one point has none.
    fn word_pieces(&self, word: &[u8], ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.len() > self.max_word_bytes {
            ids.push(self.unk);
            return;
        }
        let word_start = ids.len();
        let mut start = 0;
        while start < word.len() {
            let (vocab, longest) = if start == 0 {
                (&self.starts, self.longest_start)
            } else {
                (&self.continuations, self.longest_continuation)
            };
            let found = (start + 1..=word.len().min(start + longest))
                .rev()
                .find_map(|end| vocab.get(&word[start..end]).map(|&id| (end, id)));
            let Some((end, id)) = found else {
                ids.truncate(word_start);
                ids.push(self.unk);
                return;
            };
            ids.push(id);
            start = end;
        }
    }
}

/// The vocabulary's ASCII entries that may start a word (all of them, as the crate looks a
/// word's start up in the whole vocabulary), and those that continue one, without the prefix.
fn split_vocabulary(model: &tokenizers::models::wordpiece::WordPiece) -> (Vocab, Vocab) {
    let prefix = model.continuing_subword_prefix.as_bytes();
    let (mut starts, mut continuations) = (Vocab::default(), Vocab::default());
    for (token, id) in model.get_vocab() {
        let token = token.as_bytes();
        if !token.is_ascii() {
            continue;
        }
        if let Some(rest) = token.strip_prefix(prefix) {
            continuations.insert(rest.into(), id);
        }
        starts.insert(token.into(), id);
    }
    (starts, continuations)
}

#[cfg(test)]
mod tests;
