//! Text to token ids exactly as sentence-transformers prepares them: prompt prepended,
//! lower-cased when the model says so, truncated to `max_seq_length` with the special tokens
//! counted, and never padded here (batches pad to their longest). Static embedding models
//! take the text as it is, without special tokens, cut only where their tokenizer file says.

use std::borrow::Cow;
use std::path::Path;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::LoadError;
use super::long_text::{self, Shortening};
use super::wordpiece::AsciiWordPiece;

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

/// The token ids of one input, unpadded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSeq {
    pub ids: Vec<u32>,
    /// Segment ids (`token_type_ids`) of a pair; empty for one text, whose segment ids are
    /// all zeros.
    pub type_ids: Vec<u32>,
    /// Leading positions (a prompt) left out of pooling, for `include_prompt = false` models.
    pub pool_from: usize,
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
    /// file may define them), truncated only where the tokenizer file says so.
    Static,
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
        if let TextPreparation::Transformer { max_seq_length, .. } = preparation {
            tokenizer
                .with_truncation(Some(TruncationParams {
                    max_length: max_seq_length,
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                    direction: TruncationDirection::Right,
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
            TextPreparation::Static => (usize::MAX, Shortening::default()),
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

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Where inputs are cut, if anywhere.
    pub fn max_length(&self) -> Option<usize> {
        self.tokenizer.get_truncation().map(|t| t.max_length)
    }

    /// Prepares `prompt + text` as sentence-transformers' input module does.
    pub fn prepare(&self, prompt: &str, text: &str) -> String {
        let joined;
        let full = if prompt.is_empty() {
            text
        } else {
            joined = format!("{prompt}{text}");
            &joined
        };
        // sentence-transformers 5 no longer strips whitespace: byte-level BPE and
        // SentencePiece tokenizers give leading spaces tokens of their own.
        if self.lower_cases() {
            full.to_lowercase()
        } else {
            full.to_string()
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
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Encoded>, tokenizers::Error> {
        let special = self.special_tokens();
        let texts = texts
            .iter()
            .map(|text| self.bounded(text))
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
        let mut rest = self.encode_all(rest, special, false)?.into_iter();
        for slot in encoded.iter_mut().filter(|slot| slot.is_none()) {
            *slot = rest.next();
        }
        Ok(encoded.into_iter().flatten().collect())
    }

    /// Tokenizes (query, document) pairs as a cross-encoder's tokenizer does: one sequence
    /// with the special tokens of a pair, segment ids 1 for the document where the tokenizer
    /// gives them, and the pair truncated together (`longest_first`).
    pub fn encode_pairs(
        &self,
        query: &str,
        documents: &[Cow<'_, str>],
    ) -> Result<Vec<Encoded>, tokenizers::Error> {
        let query = self.bounded(query)?;
        let pairs = documents
            .iter()
            .map(|document| Ok((query.as_ref(), self.bounded(document)?)))
            .collect::<Result<Vec<_>, tokenizers::Error>>()?;
        self.encode_all(pairs, true, true)
    }

    /// Encodes texts or pairs, keeping segment ids for pairs only.
    fn encode_all<'s, E>(
        &self,
        inputs: Vec<E>,
        add_special_tokens: bool,
        pairs: bool,
    ) -> Result<Vec<Encoded>, tokenizers::Error>
    where
        E: Into<tokenizers::EncodeInput<'s>> + Send,
    {
        let encoded = |e: tokenizers::Encoding| Encoded {
            truncated: !e.get_overflowing().is_empty(),
            ids: e.get_ids().to_vec(),
            type_ids: if pairs {
                e.get_type_ids().to_vec()
            } else {
                Vec::new()
            },
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

    /// `text`, or the part of it that decides its tokens when it is long (`long_text`).
    fn bounded<'t>(&self, text: &'t str) -> tokenizers::Result<Cow<'t, str>> {
        long_text::bounded(&self.tokenizer, &self.shortening, text, self.window)
    }

    /// The start of `text` that holds its first `max` tokens (without special tokens).
    pub fn first_tokens<'t>(&self, text: &'t str, max: usize) -> tokenizers::Result<&'t str> {
        let bounded = self.bounded(text)?;
        let encoding = self.tokenizer.encode(bounded.as_ref(), false)?;
        let offsets = encoding.get_offsets();
        // Truncation stops at `max_seq_length` tokens, which pairs are cut to anyway.
        if offsets.len() <= max {
            return Ok(text);
        }
        let end = offsets
            .get(max.saturating_sub(1))
            .map_or(0, |&(_, end)| end);
        Ok(&text[..text.floor_char_boundary(end)])
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
            .encode_fast(prepared.as_str(), self.special_tokens())?;
        Ok(encoding.get_ids().len().saturating_sub(1))
    }
}
