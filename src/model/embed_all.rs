//! The embed-all use case (TEI's `/embed_all`): every token's vector as the transformer gives
//! it, before pooling and the modules after it.

use std::sync::Arc;

use super::inputs::{invalid, too_many_tokens};
use super::{Backend, EmbedError, EmbedOptions, Input, Model, Task};

/// The most floats one answer may hold: TEI's own limits (32 inputs of 512 tokens of a
/// 1,024-wide model) give 16 Mi, about 200 MB of JSON.
const MAX_ANSWER_FLOATS: usize = 16 << 20;

/// Each input's token vectors, in input order, and the tokens embedded.
pub struct AllTokens {
    pub vectors: Vec<Vec<Vec<f32>>>,
    pub tokens: usize,
}

impl Model {
    /// Every token's vector of each input. Refused for a model whose graph pools, scores or
    /// gives logits, and before any run for an answer over `MAX_ANSWER_FLOATS`.
    pub async fn embed_all(
        self: Arc<Self>,
        inputs: Vec<Input>,
        options: EmbedOptions,
    ) -> Result<AllTokens, EmbedError> {
        let options = EmbedOptions {
            input_type: self.input_type(options.input_type),
            dimensions: None,
            ..options
        };
        let model = self.route(options.input_type);
        model.require(Task::Embedding)?;
        let width = model.token_width.ok_or_else(|| {
            invalid(
                "model",
                format!(
                    "model `{}` gives no token embeddings: its graph pools them itself, or it is \
                     a static table; send it to POST /embed",
                    model.name
                ),
            )
        })?;
        let small = super::is_small(inputs.iter().map(Input::size));
        let submitting = model.clone();
        let (pending, tokens) = super::tokenizing(small, move || {
            let model = submitting;
            let Backend::Graph(batcher) = &model.backend else {
                return Err(EmbedError::Task(
                    "token embeddings come from a graph".into(),
                ));
            };
            batcher.check_room(inputs.len())?;
            let mut seqs = model.tokenize(&inputs, &options)?;
            let tokens: usize = seqs.iter().map(|seq| seq.len()).sum();
            if tokens > options.max_tokens {
                return Err(too_many_tokens("input", options.max_tokens));
            }
            if tokens.saturating_mul(width) > MAX_ANSWER_FLOATS {
                return Err(invalid(
                    "input",
                    format!(
                        "the inputs hold {tokens} tokens of {width} floats each; at most \
                         {MAX_ANSWER_FLOATS} floats are answered per request: send fewer inputs"
                    ),
                ));
            }
            seqs.iter_mut().for_each(|seq| seq.unpooled = true);
            Ok((batcher.submit(seqs)?, tokens))
        })
        .await??;
        let completed = pending.wait().await?;
        let vectors = completed
            .outputs
            .into_iter()
            .map(|flat| flat.chunks_exact(width).map(<[f32]>::to_vec).collect())
            .collect();
        Ok(AllTokens { vectors, tokens })
    }
}
