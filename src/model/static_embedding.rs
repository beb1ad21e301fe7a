//! sentence-transformers' `StaticEmbedding` (model2vec-style models): no graph, one table row
//! per token, averaged (`torch.nn.EmbeddingBag(mode="mean")`), then the modules after it. And
//! `SparseStaticEmbedding` (inference-free SPLADE's query side): one weight per vocabulary
//! token, given once to each distinct token of the text. Cheap enough to compute on the
//! request's own blocking thread, without a batcher.

use std::path::Path;

use super::LoadError;
use super::head::Head;
use super::sparse;
use super::tokenize::TokenSeq;
use super::weights::WeightsFile;

pub struct StaticEmbedding {
    /// `[vocabulary, dimension]`, row-major; for a sparse table `[vocabulary]`.
    table: Vec<f32>,
    dimension: usize,
    head: Head,
    /// A `SparseStaticEmbedding`: each input's vector spans the vocabulary.
    sparse: bool,
}

impl StaticEmbedding {
    /// Reads the table from `dir/model.safetensors`: `embedding.weight` as sentence-transformers
    /// saves it, or `embeddings` as model2vec does.
    pub fn load(dir: &Path, head: Head, vocab_size: usize) -> Result<Self, LoadError> {
        let (table, shape) = WeightsFile::open(dir)?.tensor(&["embedding.weight", "embeddings"])?;
        let path = dir.join("model.safetensors");
        let [rows, dimension] = shape[..] else {
            return Err(LoadError::file(
                path,
                format!(
                    "the embedding table has shape {shape:?}; expected [vocabulary, dimension]"
                ),
            ));
        };
        if rows < vocab_size {
            return Err(LoadError::file(
                path,
                format!(
                    "the embedding table has {rows} rows, fewer than the tokenizer's {vocab_size} tokens"
                ),
            ));
        }
        Ok(Self {
            table,
            dimension,
            head,
            sparse: false,
        })
    }

    /// Reads a `SparseStaticEmbedding`'s weights from `dir/model.safetensors` (`weight`, one
    /// per vocabulary token).
    pub fn load_weights(dir: &Path, vocab_size: usize) -> Result<Self, LoadError> {
        let (table, shape) = WeightsFile::open(dir)?.tensor(&["weight"])?;
        if shape[..] != [table.len()] || table.len() < vocab_size {
            return Err(LoadError::file(
                dir.join("model.safetensors"),
                format!(
                    "the weights have shape {shape:?}; expected one per token of the \
                     tokenizer's {vocab_size}"
                ),
            ));
        }
        Ok(Self {
            dimension: table.len(),
            table,
            head: Head::default(),
            sparse: true,
        })
    }

    /// The mean of each sequence's rows (zeros for no tokens, as `EmbeddingBag` gives), then
    /// the head. Token ids come from the model's own tokenizer or were checked against its
    /// vocabulary, so every row exists.
    pub fn embed(&self, seqs: &[TokenSeq]) -> Result<Vec<Vec<f32>>, String> {
        if self.sparse {
            return self.weigh(seqs);
        }
        let d = self.dimension;
        let mut pooled = vec![0.0f32; seqs.len() * d];
        for (seq, out) in seqs.iter().zip(pooled.chunks_exact_mut(d)) {
            for &id in &seq.ids {
                let start = id as usize * d;
                let row = self
                    .table
                    .get(start..start + d)
                    .ok_or_else(|| format!("token id {id} is outside the embedding table"))?;
                out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
            }
            if !seq.ids.is_empty() {
                let n = seq.ids.len() as f32;
                out.iter_mut().for_each(|o| *o /= n);
            }
        }
        self.head.apply(pooled, seqs.len(), d)
    }
}

impl StaticEmbedding {
    /// Each sequence's distinct tokens with their weights, packed as a sparse encoder's run
    /// gives them (`sparse::pack`): a token that occurs twice counts once.
    fn weigh(&self, seqs: &[TokenSeq]) -> Result<Vec<Vec<f32>>, String> {
        seqs.iter()
            .map(|seq| {
                let mut ids = seq.ids.clone();
                ids.sort_unstable();
                ids.dedup();
                let weights = ids
                    .into_iter()
                    .map(|id| match self.table.get(id as usize) {
                        Some(&weight) => Ok((id, weight)),
                        None => Err(format!("token id {id} is outside the weights")),
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(sparse::pack(weights))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::tests::write_f32;

    #[test]
    fn averages_rows_like_embedding_bag() {
        let dir = tempfile::tempdir().unwrap();
        write_f32(
            dir.path(),
            &[(
                "embedding.weight",
                vec![3, 2],
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 9.0],
            )],
        );
        let table = StaticEmbedding::load(dir.path(), Head::default(), 3).unwrap();
        let seq = |ids: &[u32]| TokenSeq {
            ids: ids.to_vec(),
            type_ids: Vec::new(),
            pool_from: 0,
            unpooled: false,
        };
        let out = table
            .embed(&[seq(&[0, 2]), seq(&[]), seq(&[1, 1])])
            .unwrap();
        assert_eq!(out, [vec![3.0, 5.5], vec![0.0, 0.0], vec![3.0, 4.0]]);
        assert!(table.embed(&[seq(&[3])]).is_err());
        assert!(StaticEmbedding::load(dir.path(), Head::default(), 4).is_err());
    }
}
