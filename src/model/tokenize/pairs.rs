//! (query, document) pairs tokenized from each text once. Tokenizing every pair whole
//! re-tokenized the query with each document: a 16 KiB query with 2,048 one-letter
//! documents cost 3 GB and 18 s. Here the query and each document are tokenized alone (their
//! bounded prefixes, `long_text`), kept to `max_length` tokens, and each pair is put together
//! by the tokenizer's own truncation and post-processor: the ids, segment ids and truncation
//! that tokenizing the pair whole gives.

use std::borrow::Cow;
use std::cmp::Ordering;

use tokenizers::{Encoding, TruncationDirection};

use super::{Encoded, TextTokenizer};

/// One side of a pair (or a text cut to `max_tokens`): its first `max_length` tokens,
/// without special tokens, and how many tokens its (bounded) text has in all.
#[derive(Clone)]
pub(super) struct Side {
    pub(super) encoding: Encoding,
    length: usize,
}

impl Side {
    pub(super) fn truncated(&self) -> bool {
        self.encoding.len() < self.length
    }

    /// Keeps the first `tokens` tokens, dropping the rest.
    pub(super) fn keep(&mut self, tokens: usize) {
        self.encoding
            .truncate(tokens, 0, TruncationDirection::Right);
        self.encoding.take_overflowing();
    }
}

impl TextTokenizer {
    /// Tokenizes (query, document) pairs as a cross-encoder's tokenizer does: one sequence
    /// with the special tokens of a pair, segment ids 1 for the document where the tokenizer
    /// gives them, and the pair truncated together (`longest_first`). Each document is first
    /// cut to `max_tokens_per_document` of its own tokens, which is not truncation.
    pub fn encode_pairs(
        &self,
        query: &str,
        documents: &[Cow<'_, str>],
        max_tokens_per_document: Option<usize>,
    ) -> Result<Vec<Encoded>, tokenizers::Error> {
        let query = self.side(query, 0)?;
        documents
            .iter()
            .map(|document| {
                let mut document = self.side(document, 1)?;
                if let Some(max) = max_tokens_per_document.filter(|&max| max < document.length) {
                    document.keep(max);
                    document.length = document.encoding.len();
                }
                self.pair(&query, document)
            })
            .collect()
    }

    pub(super) fn side(&self, text: &str, type_id: u32) -> tokenizers::Result<Side> {
        let bounded = self.bounded(text)?;
        // Segment id 1 for the document, as tokenizing the pair gives where no post-processor
        // sets them. Without special tokens the tokenizer cuts at `max_length`, more than a
        // pair keeps of either side; the rest comes back as overflowing pieces, counted and
        // dropped.
        let mut encoding = self.tokenizer.encode_fast(bounded.as_ref(), false)?;
        let rest: usize = encoding.take_overflowing().iter().map(Encoding::len).sum();
        encoding.set_type_ids(vec![type_id; encoding.len()]);
        Ok(Side {
            length: encoding.len() + rest,
            encoding,
        })
    }

    fn pair(&self, query: &Side, mut document: Side) -> tokenizers::Result<Encoded> {
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
                side.keep(cut - 1);
            }
        }
        let cut_before = query.truncated() || document.truncated();
        let pair = self
            .tokenizer
            .post_process(query.encoding, Some(document.encoding), true)?;
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

    /// Texts of `words` words, around the lengths where `longest_first` changes its mind.
    fn text(words: usize) -> String {
        (0..words).map(|i| format!("w{} ", i % 7)).collect()
    }

    /// Every fixture tokenizer pairs the query and documents to the ids, segment ids and
    /// truncation that tokenizing each pair whole gives, at every length that matters: short,
    /// one side over `max_length`, both over it with either longer or both the same.
    #[test]
    fn pairs_match_tokenizing_each_pair_whole() {
        const MAX: usize = 24;
        let lengths = [0, 1, 5, 11, 12, 13, 21, 22, 23, 24, 25, 30, 60, 61];
        for path in fixture_tokenizers().values() {
            let preparation = TextPreparation::Transformer {
                max_seq_length: MAX,
                do_lower_case: false,
            };
            let ours = TextTokenizer::load(path, preparation).unwrap();
            let whole = configured(path, Some(MAX));
            for query in lengths.map(text) {
                let documents: Vec<Cow<str>> =
                    lengths.map(text).into_iter().map(Cow::from).collect();
                let paired = ours.encode_pairs(&query, &documents, None).unwrap();
                for (document, pair) in documents.iter().zip(paired) {
                    // `encode`, as Python's tokenizers does: `encode_fast` gives a document
                    // segment ids 0 where no post-processor sets them.
                    let expected = whole
                        .encode((query.as_str(), document.as_ref()), true)
                        .unwrap();
                    let case = format!("{path:?}: {query:?} with {document:?}");
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
            .encode_pairs("query", &[Cow::from(document.as_str())], None)
            .unwrap();
        let cut = ours
            .encode_pairs("query", &[Cow::from(document.as_str())], Some(3))
            .unwrap();
        assert!(!cut[0].truncated);
        assert!(cut[0].ids.len() < full[0].ids.len());
        let first: Vec<u32> = ours
            .tokenizer
            .encode_fast(document.as_str(), false)
            .unwrap()
            .get_ids()[..3]
            .to_vec();
        let query_alone = ours.encode_pairs("query", &[Cow::from("")], None).unwrap();
        assert_eq!(cut[0].ids.len(), query_alone[0].ids.len() + 3);
        assert!(
            cut[0].ids.windows(3).any(|w| w == first),
            "{:?} has not {first:?}",
            cut[0].ids
        );
    }
}
