//! Long inputs cost what is embedded, not what is sent. Tokenizing a whole text before
//! truncating it costs about 80 bytes and a microsecond per byte (a 2 MiB string of `!` took
//! 800 MiB); sentence-transformers' vector depends only on the first `max_seq_length`
//! tokens. So a long text is replaced by a short one that tokenizes to the same truncated
//! ids: a prefix of it, found in windows that grow from `window` bytes to `window << 3`.
//!
//! Why a prefix tokenizes the same: tokenizers split the normalized text into words
//! (pre-tokens) and tokenize each word alone, so every word that ends before the cut gives
//! the same tokens in the prefix as in the whole text. A prefix is accepted when
//! - it is cut before a space that follows a non-space character (a word boundary for every
//!   pre-tokenizer in use: BERT, Metaspace, byte-level regexes, Gemma's split) and its
//!   tokens overflow `max_seq_length`; or
//! - the tokens kept after truncation all come from words that end before the cut; or
//! - the kept tokens reach into the word the cut falls in (one long run without spaces, as
//!   CJK or an endless word give BPE and Unigram models), and doubling the window leaves them
//!   unchanged.
//!
//! Some runs yield a token or none however long they are, so only the text after them can
//! fill the budget; they are shortened first (`Shortening`): WordPiece turns a word of over
//! `max_input_chars_per_word` characters into one `[UNK]`, and most tokenizers read a run of
//! whitespace as its first character.
//!
//! Texts that none of these settle within `window << 3` bytes (a megabyte of control
//! characters, say) are cut there: the one case where the vector can differ from the
//! whole text's, and one no real text reaches.
//!
//! Truncation from the start keeps a text's last tokens, and `bounded_suffix` mirrors all
//! this with suffixes: every word after the first of a suffix tokenizes as in the whole
//! text, so a suffix is accepted when the tokens kept all come from later words, or when
//! cutting it one character later leaves them unchanged; runs are shortened from the end.

use std::borrow::Cow;

use tokenizers::{Encoding, ModelWrapper, NormalizerWrapper, PreTokenizerWrapper, Tokenizer};

/// How many times the window doubles before the text is cut regardless.
const DOUBLINGS: u32 = 3;

/// The smallest window, in bytes.
pub const MIN_WINDOW: usize = 16 * 1024;

/// Window bytes per token of `max_seq_length`: 16 times the length of an average English
/// token, so one window settles almost every real text.
pub const WINDOW_BYTES_PER_TOKEN: usize = 64;

/// Returns a text that tokenizes (with `tokenizer`'s truncation) to the same ids as `text`,
/// and is at most `window << 3` bytes long.
pub fn bounded<'a>(
    tokenizer: &Tokenizer,
    shortening: &Shortening,
    text: &'a str,
    window: usize,
) -> tokenizers::Result<Cow<'a, str>> {
    if text.len() <= window {
        return Ok(Cow::Borrowed(text));
    }
    let last = window << DOUBLINGS;
    let text = shorten_runs(text, shortening, last, End::Start);
    let mut size = window;
    let mut unchanged_from: Option<Vec<u32>> = None;
    while size <= last {
        if text.len() <= size {
            return Ok(text);
        }
        if let Some(cut) = space_cut(&text, size) {
            if overflows(&tokenizer.encode_fast(&text[..cut], true)?) {
                return Ok(prefix(text, cut));
            }
        } else {
            let cut = text.floor_char_boundary(size);
            let encoding = tokenizer.encode_fast(&text[..cut], true)?;
            if overflows(&encoding) {
                let ids = encoding.get_ids();
                if kept_from_whole_words(&encoding) || unchanged_from.as_deref() == Some(ids) {
                    return Ok(prefix(text, cut));
                }
                unchanged_from = Some(ids.to_vec());
            }
        }
        size *= 2;
    }
    let cut = space_cut(&text, last).unwrap_or_else(|| text.floor_char_boundary(last));
    tracing::debug!(
        bytes = text.len(),
        cut,
        "a long text was cut before tokenizing: no word boundary settled its tokens"
    );
    Ok(prefix(text, cut))
}

fn prefix(text: Cow<'_, str>, cut: usize) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[..cut]),
        Cow::Owned(mut text) => {
            text.truncate(cut);
            Cow::Owned(text)
        }
    }
}

/// Returns a suffix of `text` whose last `kept` tokens (without special tokens) are those
/// of `text`, also after `prompt`, and which is at most `window << 3` bytes long.
pub fn bounded_suffix<'a>(
    tokenizer: &Tokenizer,
    shortening: &Shortening,
    (prompt, text): (&str, &'a str),
    window: usize,
    kept: usize,
) -> tokenizers::Result<Cow<'a, str>> {
    if text.len() <= window {
        return Ok(Cow::Borrowed(text));
    }
    let last = window << DOUBLINGS;
    let text = shorten_runs(text, shortening, last, End::Finish);
    let kept = kept.max(1);
    let kept_ids = |encoding: &Encoding| {
        let ids = encoding.get_ids();
        ids[ids.len().saturating_sub(kept)..].to_vec()
    };
    let mut size = window;
    while size <= last {
        if text.len() <= size {
            return Ok(text);
        }
        let cut = suffix_cut(&text, size);
        let encoding = all_tokens(tokenizer, &text[cut..])?;
        if encoding.len() > kept {
            let words = encoding.get_word_ids();
            let first_word = words.iter().find_map(|w| *w);
            let first_kept = words[encoding.len() - kept];
            if first_kept.is_some() && first_kept > first_word {
                return Ok(suffix(text, cut));
            }
            // The kept tokens reach into the word the cut falls in: accepted when they do not
            // depend on where that word is cut (BPE merges a run of one letter in pairs
            // from its start, so one character more or less changes them), after the prompt
            // (which may join that word: SentencePiece's `▁` before a run of `a`).
            let after_prompt = |from: usize| match prompt {
                "" => all_tokens(tokenizer, &text[from..]),
                prompt => all_tokens(tokenizer, &[prompt, &text[from..]].concat()),
            };
            let next = text.ceil_char_boundary(cut + 1);
            if kept_ids(&after_prompt(cut)?) == kept_ids(&after_prompt(next)?) {
                return Ok(suffix(text, cut));
            }
        }
        size *= 2;
    }
    let cut = suffix_cut(&text, last);
    tracing::debug!(
        bytes = text.len(),
        cut,
        "a long text was cut before tokenizing from its end: no word settled its tokens"
    );
    Ok(suffix(text, cut))
}

/// Where a suffix of about `size` bytes starts: after a space that follows a non-space
/// character when there is one in its first half (so a word starts it, as one starts a
/// text after a prompt), else at a character boundary.
fn suffix_cut(text: &str, size: usize) -> usize {
    let from = text.ceil_char_boundary(text.len().saturating_sub(size));
    let bytes = &text.as_bytes()[from..];
    let half = bytes.len() / 2;
    memchr::memchr_iter(b' ', &bytes[..half])
        .map(|at| from + at)
        .find(|&at| {
            text[..at]
                .chars()
                .next_back()
                .is_some_and(|c| !c.is_whitespace())
        })
        .map_or(from, |space| space + 1)
}

fn suffix(text: Cow<'_, str>, cut: usize) -> Cow<'_, str> {
    match text {
        Cow::Borrowed(text) => Cow::Borrowed(&text[cut..]),
        Cow::Owned(mut text) => {
            text.drain(..cut);
            Cow::Owned(text)
        }
    }
}

/// Every token of `text`, without special tokens: the tokenizer's truncation leaves the
/// ones past its `max_length` in overflowing pieces, joined again here.
pub fn all_tokens(tokenizer: &Tokenizer, text: &str) -> tokenizers::Result<Encoding> {
    let mut encoding = tokenizer.encode(text, false)?;
    let rest = encoding.take_overflowing();
    if !rest.is_empty() {
        encoding = Encoding::merge(std::iter::once(encoding).chain(rest), false);
    }
    Ok(encoding)
}

fn overflows(encoding: &tokenizers::Encoding) -> bool {
    !encoding.get_overflowing().is_empty()
}

/// The last cut at or before `size`, and past `size / 2`, that falls before a space
/// following a non-space character.
pub fn space_cut(text: &str, size: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut end = size.min(bytes.len());
    while let Some(at) = memchr::memrchr(b' ', &bytes[..end]) {
        if at <= size / 2 {
            return None;
        }
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| !c.is_whitespace())
        {
            return Some(at);
        }
        end = at;
    }
    None
}

/// Whether every token kept after truncation belongs to a word that ends before the cut
/// (the last word of the prefix may continue past it).
fn kept_from_whole_words(encoding: &tokenizers::Encoding) -> bool {
    let last_word = |e: &tokenizers::Encoding| e.get_word_ids().iter().rev().find_map(|w| *w);
    let cut_word = encoding
        .get_overflowing()
        .iter()
        .filter_map(last_word)
        .max();
    match (last_word(encoding), cut_word) {
        (Some(kept), Some(cut)) => kept < cut,
        _ => false,
    }
}

/// Runs a tokenizer reads the same however long they are.
#[derive(Debug, Clone, Default)]
pub struct Shortening {
    /// Runs of letters and digits are cut to this many characters: a WordPiece word of over
    /// `max_input_chars_per_word` characters is one `[UNK]` however long.
    word_chars: Option<usize>,
    /// Runs of these whitespace characters are cut to their first.
    whitespace: Vec<char>,
}

impl Shortening {
    pub fn for_tokenizer(tokenizer: &Tokenizer) -> Self {
        Self {
            word_chars: long_word_chars(tokenizer).map(|max| max + 1),
            whitespace: folded_whitespace(tokenizer),
        }
    }
}

/// `max_input_chars_per_word` of WordPiece models whose words BERT's pre-tokenizer splits
/// at whitespace and punctuation of a text that only BERT's normalizer (or lower-casing)
/// changed: there, runs of letters and digits lie inside one word.
fn long_word_chars(tokenizer: &Tokenizer) -> Option<usize> {
    let ModelWrapper::WordPiece(wordpiece) = tokenizer.get_model() else {
        return None;
    };
    let bert_normalizer = |n: &NormalizerWrapper| {
        matches!(
            n,
            NormalizerWrapper::BertNormalizer(_) | NormalizerWrapper::Lowercase(_)
        )
    };
    let normalizer_ok = match tokenizer.get_normalizer() {
        None => true,
        Some(NormalizerWrapper::Sequence(sequence)) => {
            sequence.as_ref().iter().all(bert_normalizer)
        }
        Some(other) => bert_normalizer(other),
    };
    let bert_words = matches!(
        tokenizer.get_pre_tokenizer(),
        Some(PreTokenizerWrapper::BertPreTokenizer(_))
    );
    (normalizer_ok && bert_words).then_some(wordpiece.max_input_chars_per_word)
}

/// The whitespace characters of which any run tokenizes as one space, between words,
/// before and after them (BERT drops whitespace; SentencePiece normalizers fold runs into
/// one space; byte-level BPE keeps every character, and BERT's normalizer deletes control
/// characters such as U+0085). Asked of the tokenizer itself.
fn folded_whitespace(tokenizer: &Tokenizer) -> Vec<char> {
    let ids = |text: &str| {
        tokenizer
            .encode_fast(text, true)
            .map(|e| e.get_ids().to_vec())
            .ok()
    };
    let contexts = [("x", "y"), ("", "y"), ("x", "")];
    let reads_as_one_space = |run: &str| {
        contexts.iter().all(|(before, after)| {
            let ids_of_run = ids(&format!("{before}{run}{after}"));
            ids_of_run.is_some() && ids_of_run == ids(&format!("{before} {after}"))
        })
    };
    let single: Vec<char> = (0..=0x3000u32)
        .filter_map(char::from_u32)
        .filter(|c| c.is_whitespace() && reads_as_one_space(&format!("{c}{c}")))
        .collect();
    let pairs_fold = single.iter().all(|&first| {
        single
            .iter()
            .all(|&second| reads_as_one_space(&format!("{first}{second}")))
    });
    if pairs_fold { single } else { Vec::new() }
}

/// Which end of a text `shorten_runs` reads from: the start for prefixes, the finish for
/// suffixes.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Start,
    Finish,
}

/// Shortens the runs `shortening` names, reading from `end`; stops once `limit` bytes are
/// written (or read, when nothing was shortened before them). CJK ideographs are words of
/// their own for BERT, so they end runs of letters.
fn shorten_runs<'a>(
    text: &'a str,
    shortening: &Shortening,
    limit: usize,
    end: End,
) -> Cow<'a, str> {
    #[derive(PartialEq)]
    enum Run {
        Word(usize),
        Space,
        Other,
    }
    if shortening.word_chars.is_none() && shortening.whitespace.is_empty() {
        return Cow::Borrowed(text);
    }
    let keep = shortening.word_chars.unwrap_or(usize::MAX);
    let chars: Box<dyn Iterator<Item = (usize, char)>> = match end {
        End::Start => Box::new(text.char_indices()),
        End::Finish => Box::new(text.char_indices().rev()),
    };
    // Read from the finish, the kept characters are collected backwards.
    let mut shortened: Option<String> = None;
    let mut run = Run::Other;
    for (at, c) in chars {
        let next = if c.is_whitespace() && shortening.whitespace.contains(&c) {
            Run::Space
        } else if c.is_alphanumeric() && !is_cjk_ideograph(c) {
            match run {
                Run::Word(n) => Run::Word(n + 1),
                _ => Run::Word(1),
            }
        } else {
            Run::Other
        };
        let drop =
            matches!(next, Run::Word(n) if n > keep) || (next == Run::Space && run == Run::Space);
        run = next;
        let read = match end {
            End::Start => at,
            End::Finish => text.len() - at - c.len_utf8(),
        };
        match (&mut shortened, drop) {
            // Nothing shortened within the part that can matter: the text stays as it is.
            (None, false) if read > limit => break,
            (None, true) => {
                shortened = Some(match end {
                    End::Start => text[..at].to_owned(),
                    End::Finish => text[at + c.len_utf8()..].chars().rev().collect(),
                })
            }
            (Some(out), false) => {
                out.push(c);
                if out.len() > limit {
                    break;
                }
            }
            _ => {}
        }
    }
    match (shortened, end) {
        (None, _) => Cow::Borrowed(text),
        (Some(out), End::Start) => Cow::Owned(out),
        (Some(out), End::Finish) => Cow::Owned(out.chars().rev().collect()),
    }
}

/// The CJK blocks BERT's normalizer puts spaces around.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

#[cfg(test)]
mod tests;
