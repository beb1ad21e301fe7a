//! The rerank use case: a query and its documents in, one score per document out, computed
//! as sentence-transformers' `CrossEncoder.predict` computes it. Pairs queue on the model's
//! batcher like embedding inputs, so pairs of many requests share runs.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use super::cross_encoder::Activation;
use super::kind::Task;
use super::{Backend, EmbedError, Model, TruncationDirection};
use crate::batcher::Pending;

/// What a rerank request asks besides its texts.
#[derive(Debug, Clone)]
pub struct RerankOptions {
    /// Whether over-long pairs are truncated (else refused); the model's setting when `None`.
    pub truncate: Option<bool>,
    /// Most tokens the request may hold, all pairs together.
    pub max_tokens: usize,
    /// Each document is first cut to this many of its own tokens (Cohere's
    /// `max_tokens_per_doc`).
    pub max_tokens_per_document: Option<usize>,
    /// Which end of an over-long pair is cut.
    pub truncation_direction: TruncationDirection,
}

/// Each document's score, in document order, and what they cost.
#[derive(Debug)]
pub struct Reranked {
    /// The graph's logit for each pair.
    pub logits: Vec<f32>,
    /// The logits through the model's activation: `CrossEncoder.predict`'s scores.
    pub scores: Vec<f32>,
    /// Tokens of all pairs, after truncation.
    pub tokens: usize,
    pub queued: Duration,
    pub inference: Duration,
}

impl Model {
    /// Scores each document against `query`. Tokenizing runs on the blocking pool, or for
    /// small requests on the calling task (see `is_small`); waiting for the batcher holds no
    /// thread.
    pub async fn rerank(
        self: Arc<Self>,
        query: String,
        documents: Arc<Vec<String>>,
        options: RerankOptions,
    ) -> Result<Reranked, EmbedError> {
        let size = query.len() + documents.iter().map(String::len).sum::<usize>();
        let model = self.clone();
        let (pending, tokens) = super::tokenizing(super::is_small([size]), move || {
            model.start_pairs(&query, &documents, &options)
        })
        .await??;
        self.scored(pending.wait().await, tokens)
    }

    /// `rerank` on the calling thread, which must not be an async worker.
    pub fn rerank_blocking(
        &self,
        query: &str,
        documents: &[String],
        options: &RerankOptions,
    ) -> Result<Reranked, EmbedError> {
        let (pending, tokens) = self.start_pairs(query, documents, options)?;
        self.scored(pending.wait_blocking(), tokens)
    }

    fn start_pairs(
        &self,
        query: &str,
        documents: &[String],
        options: &RerankOptions,
    ) -> Result<(Pending<Vec<f32>>, usize), EmbedError> {
        self.require(Task::Rerank)?;
        let Backend::Graph(batcher) = &self.backend else {
            return Err(EmbedError::Task(
                "a cross-encoder runs as a graph".to_string(),
            ));
        };
        batcher.check_room(documents.len())?;
        let query = self.tokenizer.prepare_text(query);
        let documents: Vec<Cow<str>> = documents
            .iter()
            .map(|document| self.tokenizer.prepare_text(document))
            .collect();
        let encoded = self
            .tokenizer
            .encode_pairs(
                &query,
                &documents,
                options.max_tokens_per_document,
                options.truncation_direction,
            )
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let truncate = options.truncate.unwrap_or(self.truncate);
        let (seqs, tokens) =
            self.sequences(encoded, truncate, options.max_tokens, "documents", |i| {
                format!("the query with document {i}")
            })?;
        Ok((batcher.submit(seqs)?, tokens))
    }

    fn scored(
        &self,
        reply: Result<crate::batcher::Completed<Vec<f32>>, crate::batcher::BatchError>,
        tokens: usize,
    ) -> Result<Reranked, EmbedError> {
        let completed = reply?;
        let activation = self.activation().unwrap_or(Activation::Identity);
        let logits: Vec<f32> = completed
            .outputs
            .iter()
            .map(|row| row.first().copied().unwrap_or(f32::NAN))
            .collect();
        if let Some(i) = logits.iter().position(|l| !l.is_finite()) {
            return Err(EmbedError::Task(format!(
                "model `{}` gave no finite score for document {i}",
                self.name
            )));
        }
        let mut scores = logits.clone();
        activation.apply(&mut scores);
        Ok(Reranked {
            scores,
            logits,
            tokens,
            queued: completed.queued,
            inference: completed.inference,
        })
    }
}
