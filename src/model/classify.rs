//! The classify use case (TEI's `/predict`): a text, or a pair of texts, in; a score per label
//! out, as transformers scores a sequence classifier: a softmax over the logits for a
//! single-label model, an independent sigmoid per label for a multi-label one. Inputs queue on
//! the model's batcher like embedding inputs, so inputs of many requests share runs.

use std::sync::Arc;
use std::time::Duration;

use super::kind::Task;
use super::tokenize::{Cut, Encoded};
use super::{Backend, EmbedError, Model, TruncationDirection};
use crate::batcher::{BatchError, Completed, Pending};

/// One input of a classifier: a text, or a pair encoded together as a cross-encoder's
/// tokenizer encodes (query, document).
#[derive(Debug, Clone)]
pub enum ClassifyInput {
    Text(String),
    Pair(String, String),
}

impl ClassifyInput {
    fn size(&self) -> usize {
        match self {
            Self::Text(text) => text.len(),
            Self::Pair(first, second) => first.len() + second.len(),
        }
    }
}

/// What a classify request asks besides its inputs.
#[derive(Debug, Clone)]
pub struct ClassifyOptions {
    /// Whether over-long inputs are truncated (else refused); the model's setting when `None`.
    pub truncate: Option<bool>,
    /// Most tokens the request may hold, all inputs together.
    pub max_tokens: usize,
    /// Which end of an over-long input is cut.
    pub truncation_direction: TruncationDirection,
}

/// Each input's logits and scores, in input order, label by label in the order of `labels`.
#[derive(Debug)]
pub struct Classified {
    pub labels: Vec<String>,
    pub logits: Vec<Vec<f32>>,
    /// Softmax of the logits, or a sigmoid per label for a multi-label model.
    pub scores: Vec<Vec<f32>>,
    /// Tokens of all inputs, after truncation.
    pub tokens: usize,
    pub queued: Duration,
    pub inference: Duration,
}

impl Model {
    /// Scores each input against the model's labels. Tokenizing runs on the blocking pool, or
    /// for small requests on the calling task; waiting for the batcher holds no thread.
    pub async fn classify(
        self: Arc<Self>,
        inputs: Vec<ClassifyInput>,
        options: ClassifyOptions,
    ) -> Result<Classified, EmbedError> {
        let small = super::is_small(inputs.iter().map(ClassifyInput::size));
        let model = self.clone();
        let (pending, tokens) =
            super::tokenizing(small, move || model.start_classify(&inputs, &options)).await??;
        self.classified(pending.wait().await, tokens)
    }

    /// `classify` on the calling thread, which must not be an async worker.
    pub fn classify_blocking(
        &self,
        inputs: &[ClassifyInput],
        options: &ClassifyOptions,
    ) -> Result<Classified, EmbedError> {
        let (pending, tokens) = self.start_classify(inputs, options)?;
        self.classified(pending.wait_blocking(), tokens)
    }

    fn start_classify(
        &self,
        inputs: &[ClassifyInput],
        options: &ClassifyOptions,
    ) -> Result<(Pending<Vec<f32>>, usize), EmbedError> {
        self.require(Task::Classification)?;
        let Backend::Graph(batcher) = &self.backend else {
            return Err(EmbedError::Task("a classifier runs as a graph".to_string()));
        };
        batcher.check_room(inputs.len())?;
        let tokenizer_error = |e: tokenizers::Error| EmbedError::Tokenizer(e.to_string());
        let encoded = inputs
            .iter()
            .map(|input| {
                let mut encoded = match input {
                    ClassifyInput::Text(text) => {
                        let text = self.tokenizer.prepare_text(text);
                        let cut = Cut {
                            direction: options.truncation_direction,
                            ..Cut::default()
                        };
                        self.tokenizer.encode_batch_cut(&[text], cut)
                    }
                    ClassifyInput::Pair(first, second) => {
                        let first = self.tokenizer.prepare_text(first);
                        let second = self.tokenizer.prepare_text(second);
                        self.tokenizer.encode_pairs(
                            &first,
                            &[second],
                            None,
                            options.truncation_direction,
                        )
                    }
                }
                .map_err(tokenizer_error)?;
                Ok(encoded.pop().unwrap_or_default())
            })
            .collect::<Result<Vec<Encoded>, EmbedError>>()?;
        let truncate = options.truncate.unwrap_or(self.truncate);
        let (seqs, tokens) =
            self.sequences(encoded, truncate, options.max_tokens, "inputs", |i| {
                format!("inputs[{i}]")
            })?;
        Ok((batcher.submit(seqs)?, tokens))
    }

    fn classified(
        &self,
        reply: Result<Completed<Vec<f32>>, BatchError>,
        tokens: usize,
    ) -> Result<Classified, EmbedError> {
        let completed = reply?;
        let head = self
            .classifier()
            .ok_or_else(|| EmbedError::Task(format!("model `{}` has no labels", self.name)))?;
        let labels = head.label_names();
        let mut scores = Vec::with_capacity(completed.outputs.len());
        for (i, logits) in completed.outputs.iter().enumerate() {
            if logits.len() != labels.len() || logits.iter().any(|l| !l.is_finite()) {
                return Err(EmbedError::Task(format!(
                    "model `{}` gave {} logits for input {i} (finite: {}), for {} labels",
                    self.name,
                    logits.len(),
                    logits.iter().all(|l| l.is_finite()),
                    labels.len()
                )));
            }
            scores.push(if head.multi_label {
                logits.iter().map(|&l| sigmoid(l)).collect()
            } else {
                softmax(logits)
            });
        }
        Ok(Classified {
            labels,
            logits: completed.outputs,
            scores,
            tokens,
            queued: completed.queued,
            inference: completed.inference,
        })
    }
}

fn sigmoid(logit: f32) -> f32 {
    1.0 / (1.0 + (-logit).exp())
}

/// Shifted by the largest logit, so that no exponential overflows.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 1000.0, 0.0]);
        assert!((p[0] - 0.5).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6 && p[2] < 1e-6);
        let p = softmax(&[0.1, -2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[2] > p[0] && p[0] > p[1]);
    }

    #[test]
    fn sigmoid_is_a_half_at_zero_and_keeps_sides() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert!(sigmoid(0.005) > 0.5 && sigmoid(-0.005) < 0.5);
        assert!(sigmoid(-100.0) >= 0.0 && sigmoid(100.0) <= 1.0);
    }
}
