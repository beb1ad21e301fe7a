//! The sparse embed use case (TEI's `/embed_sparse`): a SPLADE encoder's weight per
//! vocabulary token, of which only the non-zero ones are sent, as sentence-transformers'
//! `SparseEncoder.encode` gives them (at most the model's `max_active_dims`).

use std::sync::Arc;

use super::embed::Embedded;
use super::kind::ModelKind;
use super::{EmbedError, EmbedOptions, Input, Model, Task};

/// The non-zero weights of one input: vocabulary ids, ascending, and their weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl Model {
    /// Each input's non-zero weights, in input order, and what they cost (`tokens` and the
    /// times as `embed` reports them).
    pub async fn embed_sparse(
        self: Arc<Self>,
        inputs: Vec<Input>,
        options: EmbedOptions,
    ) -> Result<(Vec<SparseVector>, Embedded), EmbedError> {
        let options = EmbedOptions {
            dimensions: None,
            input_type: self.input_type(options.input_type),
            ..options
        };
        let model = self.route(options.input_type);
        model.require(Task::SparseEmbedding)?;
        let max_active = match model.kind {
            ModelKind::SparseEmbedding {
                max_active_dims, ..
            } => max_active_dims,
            _ => None,
        };
        let mut embedded = model.vectors(inputs, options).await?;
        let vectors = std::mem::take(&mut embedded.vectors)
            .iter()
            .map(|packed| sparse(packed, max_active))
            .collect();
        Ok((vectors, embedded))
    }
}

/// One input's weights as a sparse encoder's run gives them: only the positive ones, each as
/// its vocabulary id's bits then its weight, by ascending id. A dense row of a BERT
/// vocabulary is 120 KB, nearly all zeros, and a request of 2,048 short inputs would hold
/// 250 MB of them until it completes.
pub(super) fn pack(weights: impl IntoIterator<Item = (u32, f32)>) -> Vec<f32> {
    weights
        .into_iter()
        .filter(|&(_, weight)| weight > 0.0)
        .flat_map(|(id, weight)| [f32::from_bits(id), weight])
        .collect()
}

/// The weights of `packed` (see `pack`), the `max_active` largest of them where the model
/// sets it (ties to the lower id), by ascending id.
fn sparse(packed: &[f32], max_active: Option<usize>) -> SparseVector {
    let mut active: Vec<(u32, f32)> = packed
        .chunks_exact(2)
        .map(|pair| (pair[0].to_bits(), pair[1]))
        .collect();
    if let Some(max) = max_active.filter(|&max| max < active.len()) {
        active.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        active.truncate(max);
        active.sort_by_key(|&(id, _)| id);
    }
    SparseVector {
        indices: active.iter().map(|&(id, _)| id).collect(),
        values: active.iter().map(|&(_, weight)| weight).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(dense: &[f32]) -> Vec<f32> {
        pack(dense.iter().enumerate().map(|(id, &w)| (id as u32, w)))
    }

    #[test]
    fn keeps_the_positive_weights_and_at_most_the_largest() {
        let dense = packed(&[0.0, 0.5, 0.0, 2.0, 0.5, 1.0]);
        assert_eq!(
            sparse(&dense, None),
            SparseVector {
                indices: vec![1, 3, 4, 5],
                values: vec![0.5, 2.0, 0.5, 1.0]
            }
        );
        assert_eq!(
            sparse(&dense, Some(3)),
            SparseVector {
                indices: vec![1, 3, 5],
                values: vec![0.5, 2.0, 1.0]
            }
        );
        assert_eq!(sparse(&packed(&[0.0; 4]), Some(2)), SparseVector::default());
    }
}
