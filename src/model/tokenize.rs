//! Text to token ids exactly as sentence-transformers prepares them: prompt prepended,
//! lower-cased when the model says so, truncated to `max_seq_length` with the special tokens
//! counted, and never padded here (batches pad to their longest). Static embedding models
//! take the text as it is, without special tokens, cut only where their tokenizer file says.

use std::borrow::Cow;
use std::path::Path;

use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationParams, TruncationStrategy};

use super::LoadError;
use super::long_text::{self, Shortening};
use super::wordpiece::AsciiWordPiece;

mod pairs;

/// Which end of an over-long input is cut (TEI's `truncation_direction`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub enum TruncationDirection {
    /// The end, as sentence-transformers cuts.
    #[default]
    #[serde(alias = "right")]
    Right,
    /// The start: the last tokens are kept (a prompt stays whole).
    #[serde(alias = "left")]
    Left,
}

impl From<TruncationDirection> for tokenizers::TruncationDirection {
    fn from(direction: TruncationDirection) -> Self {
        match direction {
            TruncationDirection::Right => Self::Right,
            TruncationDirection::Left => Self::Left,
        }
    }
}

/// How a request's texts are cut where that differs from the model's own truncation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cut {
    /// Most tokens a text keeps, special tokens included (Cohere's `max_tokens`); the
    /// model's own length when `None`.
    pub max_tokens: Option<usize>,
    pub direction: TruncationDirection,
    /// How many leading bytes of each text are its prompt, kept when cutting from the start.
    pub prompt_bytes: usize,
}

/// Token ids of one text (or pair), and whether truncation cut it.
#[derive(Debug, Default)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Segment ids, for pairs only.
    pub type_ids: Vec<u32>,
    pub truncated: bool,
}

/// Requests with fewer texts are tokenized on one thread.
const PARALLEL_FROM: usize = 16;

/// Bytes of text counted at a time by `exceeds`.
const COUNT_WINDOW: usize = 64 * 1024;

/// The most tokens one byte of text can give: a character's compatibility decomposition
/// (NFKD, NFKC) has up to 18 characters, ﷺ's, from 3 bytes, and a character is at most
/// one token; rounded up.
const MAX_TOKENS_PER_BYTE: usize = 8;

/// The token ids of one input, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSeq {
    pub ids: Vec<u32>,
    /// Segment ids (`token_type_ids`) of a pair; empty for one text, whose segment ids are
    /// all zeros.
    pub type_ids: Vec<u32>,
    /// Leading positions (a prompt) left out of pooling, for `include_prompt = false` models.
    pub pool_from: usize,
    /// Every token's vector is wanted, not pooled (TEI's `/embed_all`).
    pub unpooled: bool,
}

impl TokenSeq {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// How the model's input module prepares text.
#[derive(Debug, Clone, Copy)]
pub enum TextPreparation {
    /// sentence-transformers' `Transformer`: special tokens added, truncated at
    /// `max_seq_length`, lower-cased when the folder says `do_lower_case`.
    Transformer {
        max_seq_length: usize,
        do_lower_case: bool,
    },
    /// `StaticEmbedding`: the text as it is, without special tokens (although the tokenizer
    /// file may define them), truncated only where the tokenizer file says so, or at
    /// `max_length` (`SparseStaticEmbedding` truncates at its tokenizer's `model_max_length`).
    Static { max_length: Option<usize> },
}

pub struct TextTokenizer {
    tokenizer: Tokenizer,
    preparation: TextPreparation,
    vocab_size: usize,
    pub pad_id: u32,
    /// Texts longer than this many bytes are cut before tokenizing (`long_text`).
    window: usize,
    shortening: Shortening,
    /// The exact fast path for ASCII text, where the tokenizer is BERT's WordPiece.
    ascii: Option<AsciiWordPiece>,
}

impl TextTokenizer {
    pub fn load(path: &Path, preparation: TextPreparation) -> Result<Self, LoadError> {
        let mut tokenizer =
            Tokenizer::from_file(path).map_err(|e| LoadError::file(path, e.to_string()))?;
        // Hub tokenizer.json files often carry fixed padding and a shorter truncation (128 for
        // all-MiniLM-L6-v2); sentence-transformers ignores both, and so must we.
        let pad_id = tokenizer
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| {
                ["[PAD]", "<pad>", "<|endoftext|>"]
                    .iter()
                    .find_map(|t| tokenizer.token_to_id(t))
            })
            .unwrap_or(0);
        tokenizer.with_padding(None);
        // A static model keeps the file's own truncation, as sentence-transformers does.
        let truncate_at = match preparation {
            TextPreparation::Transformer { max_seq_length, .. } => Some(max_seq_length),
            TextPreparation::Static { max_length } => max_length,
        };
        if let Some(max_seq_length) = truncate_at {
            tokenizer
                .with_truncation(Some(TruncationParams {
                    max_length: max_seq_length,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                    direction: tokenizers::TruncationDirection::Right,
                }))
                .map_err(|e| LoadError::file(path, format!("cannot set truncation: {e}")))?;
        }
        let vocab_size = tokenizer.get_vocab_size(true);
        let (window, shortening) = match preparation {
            TextPreparation::Transformer { max_seq_length, .. } => (
                long_text::MIN_WINDOW
                    .max(max_seq_length.saturating_mul(long_text::WINDOW_BYTES_PER_TOKEN)),
                Shortening::for_tokenizer(&tokenizer),
            ),
            // Every token of a static model's text counts in its mean.
            TextPreparation::Static { .. } => (usize::MAX, Shortening::default()),
        };
        let ascii = AsciiWordPiece::new(&tokenizer);
        tracing::debug!(
            path = %path.display(),
            ascii_fast_path = ascii.is_some(),
            "tokenizer loaded"
        );
        Ok(Self {
            tokenizer,
            preparation,
            vocab_size,
            pad_id,
            window,
            shortening,
            ascii,
        })
    }

    fn special_tokens(&self) -> bool {
        matches!(self.preparation, TextPreparation::Transformer { .. })
    }

    /// An ordinary word's id, to fill synthetic inputs with (`RunShapes`).
    pub fn filler_id(&self) -> u32 {
        ["the", "\u{2581}the", "\u{120}the"]
            .iter()
            .find_map(|word| self.tokenizer.token_to_id(word))
            .unwrap_or(self.vocab_size as u32 / 2)
    }

    /// The texts of token-id sequences.
    pub fn decode(
        &self,
        sequences: &[Vec<u32>],
        skip_special_tokens: bool,
    ) -> tokenizers::Result<Vec<String>> {
        let slices: Vec<&[u32]> = sequences.iter().map(Vec::as_slice).collect();
        self.tokenizer.decode_batch(&slices, skip_special_tokens)
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Where inputs are cut, if anywhere.
    pub fn max_length(&self) -> Option<usize> {
        self.tokenizer.get_truncation().map(|t| t.max_length)
    }

    /// Prepares `prompt + text` as sentence-transformers' input module does: borrowed when
    /// there is nothing to change.
    pub fn prepare<'t>(&self, prompt: &str, text: &'t str) -> Cow<'t, str> {
        // sentence-transformers 5 no longer strips whitespace: byte-level BPE and
        // SentencePiece tokenizers give leading spaces tokens of their own.
        match (prompt.is_empty(), self.lower_cases()) {
            (true, false) => Cow::Borrowed(text),
            (true, true) => Cow::Owned(text.to_lowercase()),
            (false, false) => Cow::Owned(format!("{prompt}{text}")),
            (false, true) => Cow::Owned(format!("{prompt}{text}").to_lowercase()),
        }
    }

    /// `text` prepared without a prompt: borrowed unless the model lower-cases.
    pub fn prepare_text<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.lower_cases() {
            Cow::Owned(text.to_lowercase())
        } else {
            Cow::Borrowed(text)
        }
    }

    fn lower_cases(&self) -> bool {
        matches!(
            self.preparation,
            TextPreparation::Transformer {
                do_lower_case: true,
                ..
            }
        )
    }

    /// Tokenizes prepared texts: many in parallel (the tokenizers crate's thread pool), a few
    /// on the calling thread, where handing them to the pool would cost more than it saves
    /// and its threads would compete with inference for the cores.
    /// Long texts are first cut to the part that decides their tokens (`long_text`); ASCII
    /// texts then take the exact fast path where the tokenizer has one (`wordpiece`).
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
    ) -> Result<Vec<Encoded>, tokenizers::Error> {
        let special = self.special_tokens();
        let texts = texts
            .iter()
            .map(|text| self.bounded(text.as_ref()))
            .collect::<Result<Vec<Cow<str>>, _>>()?;
        let mut encoded: Vec<Option<Encoded>> = match &self.ascii {
            Some(ascii) => texts.iter().map(|t| ascii.encode(t, special)).collect(),
            None => texts.iter().map(|_| None).collect(),
        };
        let rest: Vec<Cow<str>> = texts
            .into_iter()
            .zip(&encoded)
            .filter(|(_, done)| done.is_none())
            .map(|(text, _)| text)
            .collect();
        let mut rest = self.encode_all(rest, special)?.into_iter();
        for slot in encoded.iter_mut().filter(|slot| slot.is_none()) {
            *slot = rest.next();
        }
        Ok(encoded.into_iter().flatten().collect())
    }

    /// `encode_batch` with a cut other than the model's own (`Cut`): to fewer tokens, or
    /// from the start.
    pub fn encode_batch_cut<S: AsRef<str>>(
        &self,
        texts: &[S],
        cut: Cut,
    ) -> Result<Vec<Encoded>, tokenizers::Error> {
        let Some(max_tokens) = cut.max_tokens.or(self.max_length()) else {
            return self.encode_batch(texts);
        };
        if cut.max_tokens.is_none() && cut.direction == TruncationDirection::Right {
            return self.encode_batch(texts);
        }
        let special = self.special_tokens();
        let added = match self.tokenizer.get_post_processor() {
            Some(processor) if special => tokenizers::PostProcessor::added_tokens(processor, false),
            _ => 0,
        };
        let budget = max_tokens.saturating_sub(added).max(1);
        texts
            .iter()
            .map(|text| {
                let (kept, truncated) = match cut.direction {
                    TruncationDirection::Right => {
                        let mut text = self.side(text.as_ref(), 0, cut.direction)?;
                        if text.encoding.len() > budget {
                            text.keep(budget, cut.direction);
                        }
                        let truncated = text.truncated();
                        (text.encoding, truncated)
                    }
                    TruncationDirection::Left => {
                        let (kept, length) =
                            self.last_tokens(text.as_ref(), cut.prompt_bytes, budget)?;
                        let truncated = kept.len() < length;
                        (kept, truncated)
                    }
                };
                let encoding = self.tokenizer.post_process(kept, None, special)?;
                Ok(Encoded {
                    truncated: truncated || !encoding.get_overflowing().is_empty(),
                    ids: encoding.get_ids().to_vec(),
                    type_ids: Vec::new(),
                })
            })
            .collect()
    }

    /// The last `budget` tokens of a prepared text, without special tokens, after its prompt
    /// (its first `prompt_bytes` bytes) when that fits: a text cut from the start loses its
    /// beginning, not the model's instruction. And how many tokens the (bounded) text has in
    /// all.
    pub(super) fn last_tokens(
        &self,
        text: &str,
        prompt_bytes: usize,
        budget: usize,
    ) -> tokenizers::Result<(tokenizers::Encoding, usize)> {
        let (prompt, rest) = text.split_at(text.floor_char_boundary(prompt_bytes));
        let rest = long_text::bounded_suffix(
            &self.tokenizer,
            &self.shortening,
            (prompt, rest),
            self.window,
            budget,
        )?;
        let text = if prompt.is_empty() {
            rest
        } else {
            Cow::Owned([prompt, rest.as_ref()].concat())
        };
        let mut tokens = long_text::all_tokens(&self.tokenizer, &text)?;
        let length = tokens.len();
        if length <= budget {
            return Ok((tokens, length));
        }
        let prompt_tokens = if prompt.is_empty() {
            0
        } else {
            tokens
                .get_offsets()
                .iter()
                .take_while(|(_, end)| *end <= prompt.len())
                .count()
                .min(budget)
        };
        // The prompt's tokens are copied out only when there are any.
        let prompt = (prompt_tokens > 0).then(|| {
            let mut prompt = tokens.clone();
            prompt.truncate(prompt_tokens, 0, tokenizers::TruncationDirection::Right);
            prompt.take_overflowing();
            prompt
        });
        tokens.truncate(
            budget - prompt_tokens,
            0,
            tokenizers::TruncationDirection::Left,
        );
        tokens.take_overflowing();
        Ok(match prompt {
            Some(mut prompt) => {
                prompt.merge_with(tokens, false);
                (prompt, length)
            }
            None => (tokens, length),
        })
    }

    /// Encodes texts: many in parallel, a few on this thread (`encode_batch`).
    fn encode_all(
        &self,
        inputs: Vec<Cow<'_, str>>,
        add_special_tokens: bool,
    ) -> Result<Vec<Encoded>, tokenizers::Error> {
        let encoded = |e: tokenizers::Encoding| Encoded {
            truncated: !e.get_overflowing().is_empty(),
            ids: e.get_ids().to_vec(),
            type_ids: Vec::new(),
        };
        if inputs.len() < PARALLEL_FROM {
            return inputs
                .into_iter()
                .map(|input| {
                    self.tokenizer
                        .encode_fast(input, add_special_tokens)
                        .map(encoded)
                })
                .collect();
        }
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, add_special_tokens)?;
        Ok(encodings.into_iter().map(encoded).collect())
    }

    /// Whether `texts` hold more than `max` tokens (without special tokens), for a model
    /// that does not truncate: a static table reads every token, so a 16 MiB text is
    /// tokenized whole, and its full encoding (or `/tokenize`'s answer) costs about 80 bytes
    /// a token. This counts in windows of `COUNT_WINDOW` bytes cut before spaces, holding
    /// one window's encoding at a time. Texts that truncate are cut before tokenizing
    /// (`bounded`) and never need it; neither do texts too short to give `max` tokens.
    pub fn exceeds<S: AsRef<str>>(&self, texts: &[S], max: usize) -> tokenizers::Result<bool> {
        let bytes: usize = texts.iter().map(|t| t.as_ref().len()).sum();
        if self.max_length().is_some() || bytes.saturating_mul(MAX_TOKENS_PER_BYTE) <= max {
            return Ok(false);
        }
        let mut counted = 0;
        for text in texts {
            let mut rest = text.as_ref();
            while !rest.is_empty() {
                let cut = if rest.len() <= COUNT_WINDOW {
                    rest.len()
                } else {
                    long_text::space_cut(rest, COUNT_WINDOW)
                        .unwrap_or_else(|| rest.floor_char_boundary(COUNT_WINDOW))
                };
                counted += self.tokenizer.encode_fast(&rest[..cut], false)?.len();
                if counted > max {
                    return Ok(true);
                }
                rest = &rest[cut..];
            }
        }
        Ok(false)
    }

    /// `text`, or the part of it that decides its tokens when it is long (`long_text`).
    fn bounded<'t>(&self, text: &'t str) -> tokenizers::Result<Cow<'t, str>> {
        long_text::bounded(&self.tokenizer, &self.shortening, text, self.window)
    }

    /// The tokens of a prepared text, with the text each covers.
    pub fn tokens(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> tokenizers::Result<Vec<super::inputs::Token>> {
        let bounded = self.bounded(text)?;
        let encoding = self
            .tokenizer
            .encode(bounded.as_ref(), add_special_tokens)?;
        let specials = encoding.get_special_tokens_mask();
        Ok(encoding
            .get_ids()
            .iter()
            .zip(encoding.get_tokens())
            .zip(encoding.get_offsets())
            .zip(specials)
            .map(|(((&id, token), &(start, stop)), &special)| {
                let covered = (special == 0).then(|| bounded.get(start..stop)).flatten();
                super::inputs::Token {
                    id,
                    text: covered.unwrap_or(token).to_string(),
                    special: special != 0,
                    start: covered.map(|_| start),
                    stop: covered.map(|_| stop),
                }
            })
            .collect())
    }

    /// How many leading tokens of a prompted input are the prompt: sentence-transformers counts
    /// the tokenized prompt less its closing special token.
    pub fn prompt_length(&self, prompt: &str) -> Result<usize, tokenizers::Error> {
        let prepared = self.prepare("", prompt);
        let encoding = self
            .tokenizer
            .encode_fast(prepared.as_ref(), self.special_tokens())?;
        Ok(encoding.get_ids().len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_tokenizers::{configured, fixture_tokenizers};

    /// A text cut to `max_tokens` is what the tokenizer's own truncation at that length
    /// gives, special tokens included, for every fixture tokenizer, short texts and long.
    #[test]
    fn texts_within_max_tokens_are_the_tokenizers_own_truncation_at_that_length() {
        let texts = [
            String::new(),
            "Hello".to_string(),
            "The quick brown fox jumps over the lazy dog.".to_string(),
            "word ".repeat(5000),
        ];
        for path in fixture_tokenizers().values() {
            let preparation = TextPreparation::Transformer {
                max_seq_length: 64,
                do_lower_case: false,
            };
            let ours = TextTokenizer::load(path, preparation).unwrap();
            for max_tokens in [3, 5, 8, 13, 63] {
                let cut = Cut {
                    max_tokens: Some(max_tokens),
                    ..Cut::default()
                };
                let within = ours.encode_batch_cut(&texts, cut).unwrap();
                let theirs = configured(path, Some(max_tokens));
                for (text, got) in texts.iter().zip(within) {
                    let expected = theirs.encode(text.as_str(), true).unwrap();
                    let case = format!(
                        "{path:?} at {max_tokens}: {:?}",
                        &text[..text.len().min(20)]
                    );
                    assert_eq!(got.ids, expected.get_ids(), "{case}");
                    assert_eq!(
                        got.truncated,
                        !expected.get_overflowing().is_empty(),
                        "{case}"
                    );
                }
            }
        }
    }

    fn long_texts() -> Vec<String> {
        let prose = "Antidisestablishmentarianism notwithstanding, the quick brown fox jumps over \
                     the lazy dog; 漢字仮名 3.14159 ";
        vec![
            String::new(),
            "Hello".to_string(),
            prose.repeat(3),
            // Past the smallest window: the text is bounded before tokenizing.
            prose.repeat(200),
            format!("{}{}", prose.repeat(100), "a".repeat(20_000)),
            format!("{}{}", "a".repeat(20_000), prose.repeat(100)),
        ]
    }

    fn from_start(path: &Path, max_length: usize) -> Tokenizer {
        let mut tokenizer = configured(path, Some(max_length));
        let mut params = tokenizer.get_truncation().unwrap().clone();
        params.direction = tokenizers::TruncationDirection::Left;
        tokenizer.with_truncation(Some(params)).unwrap();
        tokenizer
    }

    /// Cut from the start, a text gives what the tokenizer's own truncation from the left
    /// gives, at the model's length and shorter ones, short texts and long.
    #[test]
    fn texts_cut_from_the_start_are_the_tokenizers_own_left_truncation() {
        for path in fixture_tokenizers().values() {
            let preparation = TextPreparation::Transformer {
                max_seq_length: 64,
                do_lower_case: false,
            };
            let ours = TextTokenizer::load(path, preparation).unwrap();
            for max_tokens in [None, Some(5), Some(13), Some(32)] {
                let cut = Cut {
                    max_tokens,
                    direction: TruncationDirection::Left,
                    prompt_bytes: 0,
                };
                let theirs = from_start(path, max_tokens.unwrap_or(64));
                let texts = long_texts();
                for (text, got) in texts
                    .iter()
                    .zip(ours.encode_batch_cut(&texts, cut).unwrap())
                {
                    let expected = theirs.encode(text.as_str(), true).unwrap();
                    let case = format!("{path:?} at {max_tokens:?}: {} bytes", text.len());
                    assert_eq!(got.ids, expected.get_ids(), "{case}");
                    assert_eq!(
                        got.truncated,
                        !expected.get_overflowing().is_empty(),
                        "{case}"
                    );
                }
            }
        }
    }

    /// Cut from the start, a prompted text keeps its prompt's tokens first and then the
    /// text's last tokens: the prompt is the model's instruction, not part of the text.
    #[test]
    fn texts_cut_from_the_start_keep_their_prompt() {
        const MAX: usize = 32;
        let prompt = "query: ";
        for path in fixture_tokenizers().values() {
            let preparation = TextPreparation::Transformer {
                max_seq_length: MAX,
                do_lower_case: false,
            };
            let ours = TextTokenizer::load(path, preparation).unwrap();
            let cut = Cut {
                max_tokens: None,
                direction: TruncationDirection::Left,
                prompt_bytes: prompt.len(),
            };
            let plain = configured(path, None);
            let prompt_ids: Vec<u32> = plain
                .encode(format!("{prompt}words").as_str(), false)
                .unwrap()
                .get_ids()[..plain.encode(prompt.trim_end(), false).unwrap().len()]
                .to_vec();
            let with_specials = plain.encode("x", true).unwrap();
            let x = plain.encode("x", false).unwrap().get_ids()[0];
            let lead = with_specials
                .get_ids()
                .iter()
                .position(|&id| id == x)
                .unwrap();
            for text in long_texts().into_iter().skip(3) {
                let got = &ours
                    .encode_batch_cut(&[format!("{prompt}{text}")], cut)
                    .unwrap()[0];
                let alone = &ours
                    .encode_batch_cut(
                        &[text.as_str()],
                        Cut {
                            prompt_bytes: 0,
                            ..cut
                        },
                    )
                    .unwrap()[0];
                let case = format!("{path:?}: {} bytes", text.len());
                assert!(got.truncated, "{case}");
                assert_eq!(got.ids.len(), alone.ids.len(), "{case}");
                // The prompt's trailing space may be a token of its own, and then the prompt's.
                let text_from = (lead + prompt_ids.len()..=lead + prompt_ids.len() + 1)
                    .find(|&from| got.ids[from..] == alone.ids[from..])
                    .unwrap_or_else(|| panic!("{case}: {:?} ends unlike {:?}", got.ids, alone.ids));
                assert_eq!(got.ids[lead..lead + prompt_ids.len()], prompt_ids, "{case}");
                assert!(text_from + 20 < got.ids.len(), "{case}");
            }
        }
    }
}
