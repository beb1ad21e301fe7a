//! (query, document) pairs tokenized from each text once. Tokenizing every pair whole
//! re-tokenized the query with each document: a 16 KiB query with 2,048 one-letter
//! documents cost 3 GB and 18 s. Here the query and each document are tokenized alone (their
//! bounded prefixes, `long_text`), kept to `max_length` tokens, and each pair is put together
//! by the tokenizer's own truncation and post-processor: the ids, segment ids and truncation
//! that tokenizing the pair whole gives.

use std::borrow::Cow;
use std::cmp::Ordering;

use tokenizers::Encoding;
use tokenizers::utils::truncation::{TruncationParams, truncate_encodings};

use super::{Encoded, TextTokenizer, TruncationDirection};

/// One side of a pair (or a text cut to `max_tokens`): its first `max_length` tokens (its
/// last, cut from the start), without special tokens, and how many tokens its (bounded)
/// text has in all.
#[derive(Clone)]
pub(super) struct Side {
    pub(super) encoding: Encoding,
    length: usize,
}

impl Side {
    pub(super) fn truncated(&self) -> bool {
        self.encoding.len() < self.length
    }

    /// Keeps `tokens` tokens, dropping the rest from the end `direction` names.
    pub(super) fn keep(&mut self, tokens: usize, direction: TruncationDirection) {
        self.encoding.truncate(tokens, 0, direction.into());
        self.encoding.take_overflowing();
    }
}

impl TextTokenizer {
    /// Tokenizes (query, document) pairs as a cross-encoder's tokenizer does: one sequence
    /// with the special tokens of a pair, segment ids 1 for the document where the tokenizer
    /// gives them, and the pair truncated together (`longest_first`) from the end `direction`
    /// names. Each document is first cut to `max_tokens_per_document` of its own first
    /// tokens, which is not truncation.
    pub fn encode_pairs(
        &self,
        query: &str,
        documents: &[Cow<'_, str>],
        max_tokens_per_document: Option<usize>,
        direction: TruncationDirection,
    ) -> Result<Vec<Encoded>, tokenizers::Error> {
        let query = self.side(query, 0, direction)?;
        documents
            .iter()
            .map(|document| {
                let document = match max_tokens_per_document {
                    // The document's first tokens, then cut from either end as a pair: the
                    // routes refuse to combine it with cutting from the start, where a
                    // document of over `max_length` tokens would keep the wrong ones.
                    Some(max) => {
                        let mut document = self.side(document, 1, TruncationDirection::Right)?;
                        if max < document.length {
                            document.keep(max, TruncationDirection::Right);
                            document.length = document.encoding.len();
                        }
                        document
                    }
                    None => self.side(document, 1, direction)?,
                };
                self.pair(&query, document, direction)
            })
            .collect()
    }

    /// A text's first `max_length` tokens, or its last when `direction` is `Left`.
    pub(super) fn side(
        &self,
        text: &str,
        type_id: u32,
        direction: TruncationDirection,
    ) -> tokenizers::Result<Side> {
        // Without special tokens the tokenizer cuts at `max_length`, more than a pair keeps
        // of either side; the rest comes back as overflowing pieces, counted and dropped.
        let (mut encoding, length) = match direction {
            TruncationDirection::Right => {
                let bounded = self.bounded(text)?;
                let mut encoding = self.tokenizer.encode_fast(bounded.as_ref(), false)?;
                let rest: usize = encoding.take_overflowing().iter().map(Encoding::len).sum();
                let length = encoding.len() + rest;
                (encoding, length)
            }
            TruncationDirection::Left => {
                let kept = self.max_length().unwrap_or(usize::MAX);
                self.last_tokens(text, 0, kept)?
            }
        };
        // Segment id 1 for the document, as tokenizing the pair gives where no post-processor
        // sets them.
        encoding.set_type_ids(vec![type_id; encoding.len()]);
        Ok(Side { length, encoding })
    }

    fn pair(
        &self,
        query: &Side,
        mut document: Side,
        direction: TruncationDirection,
    ) -> tokenizers::Result<Encoded> {
        let mut query = query.clone();
        // `longest_first` gives the longer side of two over-long ones the odd token of the
        // budget, and both were cut to the same length here: the shorter one (by its whole
        // length) gives up one token more, which it can spare (it keeps half the budget).
        let cut = query.encoding.len();
        if cut > 1 && cut == document.encoding.len() {
            let shorter = match query.length.cmp(&document.length) {
                Ordering::Greater => Some(&mut document),
                Ordering::Less => Some(&mut query),
                Ordering::Equal => None,
            };
            if let Some(side) = shorter {
                side.keep(cut - 1, direction);
            }
        }
        let cut_before = query.truncated() || document.truncated();
        let (query, document) = match (direction, self.tokenizer.get_truncation()) {
            // The tokenizer's own truncation, run by `post_process`, cuts at the end.
            (TruncationDirection::Left, Some(own)) => {
                let added = self.tokenizer.get_post_processor().map_or(0, |processor| {
                    tokenizers::PostProcessor::added_tokens(processor, true)
                });
                let params = TruncationParams {
                    max_length: own.max_length.saturating_sub(added),
                    direction: direction.into(),
                    ..own.clone()
                };
                let (query, document) =
                    truncate_encodings(query.encoding, Some(document.encoding), &params)?;
                (query, document.unwrap_or_default())
            }
            _ => (query.encoding, document.encoding),
        };
        let pair = self.tokenizer.post_process(query, Some(document), true)?;
        Ok(Encoded {
            truncated: cut_before || !pair.get_overflowing().is_empty(),
            ids: pair.get_ids().to_vec(),
            type_ids: pair.get_type_ids().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::TextPreparation;
    use super::*;
    use crate::model::test_tokenizers::{configured, fixture_tokenizers};

    /// Texts of `words` words, around the lengths where `longest_first` changes its mind,
    /// each word distinct enough that a cut at the wrong end shows.
    fn text(words: usize) -> String {
        (0..words).map(|i| format!("w{} ", i % 50)).collect()
    }

    /// Every fixture tokenizer pairs the query and documents to the ids, segment ids and
    /// truncation that tokenizing each pair whole gives, cut at either end, at every length
    /// that matters: short, one side over `max_length`, both over it with either longer or
    /// both the same.
    #[test]
    fn pairs_match_tokenizing_each_pair_whole() {
        const MAX: usize = 24;
        let lengths = [0, 1, 5, 11, 12, 13, 21, 22, 23, 24, 25, 30, 60, 61];
        for (path, direction) in fixture_tokenizers().values().flat_map(|path| {
            [TruncationDirection::Right, TruncationDirection::Left].map(|d| (path, d))
        }) {
            let preparation = TextPreparation::Transformer {
                max_seq_length: MAX,
                do_lower_case: false,
            };
            let ours = TextTokenizer::load(path, preparation).unwrap();
            let mut whole = configured(path, Some(MAX));
            let mut params = whole.get_truncation().unwrap().clone();
            params.direction = direction.into();
            whole.with_truncation(Some(params)).unwrap();
            for query in lengths.map(text) {
                let documents: Vec<Cow<str>> =
                    lengths.map(text).into_iter().map(Cow::from).collect();
                let paired = ours
                    .encode_pairs(&query, &documents, None, direction)
                    .unwrap();
                for (document, pair) in documents.iter().zip(paired) {
                    // `encode`, as Python's tokenizers does: `encode_fast` gives a document
                    // segment ids 0 where no post-processor sets them.
                    let expected = whole
                        .encode((query.as_str(), document.as_ref()), true)
                        .unwrap();
                    let case = format!("{path:?} {direction:?}: {query:?} with {document:?}");
                    assert_eq!(pair.ids, expected.get_ids(), "{case}");
                    assert_eq!(pair.type_ids, expected.get_type_ids(), "{case}");
                    assert_eq!(
                        pair.truncated,
                        !expected.get_overflowing().is_empty(),
                        "{case}"
                    );
                }
            }
        }
    }

    /// `max_tokens_per_document` pairs a document's first tokens, and is no truncation.
    #[test]
    fn documents_cut_to_their_first_tokens() {
        let path = fixture_tokenizers().into_values().next().unwrap();
        let preparation = TextPreparation::Transformer {
            max_seq_length: 64,
            do_lower_case: false,
        };
        let ours = TextTokenizer::load(&path, preparation).unwrap();
        let document = text(20);
        let full = ours
            .encode_pairs(
                "query",
                &[Cow::from(document.as_str())],
                None,
                TruncationDirection::Right,
            )
            .unwrap();
        let cut = ours
            .encode_pairs(
                "query",
                &[Cow::from(document.as_str())],
                Some(3),
                TruncationDirection::Right,
            )
            .unwrap();
        assert!(!cut[0].truncated);
        assert!(cut[0].ids.len() < full[0].ids.len());
        let first: Vec<u32> = ours
            .tokenizer
            .encode_fast(document.as_str(), false)
            .unwrap()
            .get_ids()[..3]
            .to_vec();
        let query_alone = ours
            .encode_pairs("query", &[Cow::from("")], None, TruncationDirection::Right)
            .unwrap();
        assert_eq!(cut[0].ids.len(), query_alone[0].ids.len() + 3);
        assert!(
            cut[0].ids.windows(3).any(|w| w == first),
            "{:?} has not {first:?}",
            cut[0].ids
        );
    }
}
