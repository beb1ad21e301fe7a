//! The embed use case, the one path from a request's inputs to its vectors: prepare and
//! tokenize, check the token budget, run (queued on the batcher, or looked up in a static
//! table), wait, and shorten to the asked `dimensions`. The HTTP handler, the `embed`
//! subcommand and the load probe all come through here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Backend, EmbedError, EmbedOptions, Input, Model, Task, TokenSeq, l2_normalize};
use crate::batcher::{BatchError, Pending};
use crate::metrics::METRICS;

/// A request's vectors, in input order, and what they cost.
#[derive(Debug)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Tokens embedded, after truncation: the request's usage.
    pub tokens: usize,
    /// From submission until the first input ran (zero for static models).
    pub queued: Duration,
    /// Time in the runs that held the inputs.
    pub inference: Duration,
}

/// Inputs on their way: computed already, or queued on the model's batcher.
enum Started {
    Ready(Embedded),
    Queued {
        pending: Pending<Vec<f32>>,
        tokens: usize,
    },
}

impl Model {
    /// Embeds `inputs`. Tokenizing (and static lookups) run on the blocking pool, or for small
    /// requests on the calling task (see `is_small`); waiting for the batcher holds no thread.
    /// Dropping the future (the client went away) withdraws the inputs that have not run yet.
    pub async fn embed(
        self: Arc<Self>,
        inputs: Vec<Input>,
        options: EmbedOptions,
    ) -> Result<Embedded, EmbedError> {
        let options = EmbedOptions {
            input_type: self.input_type(options.input_type),
            ..options
        };
        let model = self.route(options.input_type);
        model.check_dimensions(options.dimensions)?;
        model.vectors(inputs, options).await
    }

    /// `embed` for any model that gives a vector per input: embedders, and sparse encoders
    /// (whose vectors span the vocabulary).
    pub(super) async fn vectors(
        self: Arc<Self>,
        inputs: Vec<Input>,
        options: EmbedOptions,
    ) -> Result<Embedded, EmbedError> {
        let small = super::is_small(inputs.iter().map(Input::size));
        let model = self.clone();
        let (started, options) = super::tokenizing(small, move || {
            let started = model.start(&inputs, &options);
            (started, options)
        })
        .await?;
        let embedded = match started? {
            Started::Ready(embedded) => embedded,
            Started::Queued { pending, tokens } => completed(pending.wait().await, tokens)?,
        };
        Ok(shorten(embedded, options.dimensions))
    }

    /// `embed` on the calling thread, which must not be an async worker.
    pub fn embed_blocking(
        &self,
        inputs: &[Input],
        options: &EmbedOptions,
    ) -> Result<Embedded, EmbedError> {
        let options = EmbedOptions {
            input_type: self.input_type(options.input_type),
            ..options.clone()
        };
        let model = self.route_ref(options.input_type);
        model.check_dimensions(options.dimensions)?;
        model.vectors_blocking(inputs, &options)
    }

    /// `vectors` on the calling thread, which must not be an async worker.
    pub(super) fn vectors_blocking(
        &self,
        inputs: &[Input],
        options: &EmbedOptions,
    ) -> Result<Embedded, EmbedError> {
        let embedded = match self.start(inputs, options)? {
            Started::Ready(embedded) => embedded,
            Started::Queued { pending, tokens } => completed(pending.wait_blocking(), tokens)?,
        };
        Ok(shorten(embedded, options.dimensions))
    }

    fn check_dimensions(&self, dimensions: Option<usize>) -> Result<(), EmbedError> {
        self.require(Task::Embedding)?;
        match dimensions {
            Some(asked) if !(1..=self.dimension).contains(&asked) => Err(EmbedError::Invalid {
                param: "dimensions",
                message: format!(
                    "dimensions must be between 1 and {} for model `{}`, got {asked}",
                    self.dimension, self.name
                ),
            }),
            _ => Ok(()),
        }
    }

    /// Tokenizes (and for static models embeds) on the calling thread; graph models'
    /// inputs are queued on the batcher.
    fn start(&self, inputs: &[Input], options: &EmbedOptions) -> Result<Started, EmbedError> {
        if let Backend::Graph(batcher) = &self.backend {
            batcher.check_room(inputs.len())?;
        }
        let seqs = self.tokenize(inputs, options)?;
        let tokens: usize = seqs.iter().map(TokenSeq::len).sum();
        if tokens > options.max_tokens {
            return Err(EmbedError::Invalid {
                param: "input",
                message: format!(
                    "the inputs hold {tokens} tokens; at most {} are allowed per request \
                     (server.max_tokens_per_request): split them over several requests",
                    options.max_tokens
                ),
            });
        }
        match &self.backend {
            Backend::Graph(batcher) => Ok(Started::Queued {
                pending: batcher.submit(seqs)?,
                tokens,
            }),
            Backend::Static(table) => {
                let started = Instant::now();
                let vectors = table.embed(&seqs).map_err(BatchError::Inference)?;
                let inference = started.elapsed();
                let model = [self.name.as_str()];
                METRICS
                    .inference_seconds
                    .with_label_values(&model)
                    .observe(inference.as_secs_f64());
                METRICS
                    .tokens
                    .with_label_values(&model)
                    .inc_by(tokens as u64);
                Ok(Started::Ready(Embedded {
                    vectors,
                    tokens,
                    queued: Duration::ZERO,
                    inference,
                }))
            }
        }
    }
}

fn completed(
    reply: Result<crate::batcher::Completed<Vec<f32>>, BatchError>,
    tokens: usize,
) -> Result<Embedded, EmbedError> {
    let completed = reply?;
    Ok(Embedded {
        vectors: completed.outputs,
        tokens,
        queued: completed.queued,
        inference: completed.inference,
    })
}

/// Matryoshka shortening: the first `dimensions` values, normalized again, as OpenAI's
/// `dimensions` and sentence-transformers' `truncate_dim` followed by normalization give.
fn shorten(mut embedded: Embedded, dimensions: Option<usize>) -> Embedded {
    if let Some(dimensions) = dimensions {
        for vector in &mut embedded.vectors {
            vector.truncate(dimensions);
            l2_normalize(vector);
        }
    }
    embedded
}
