//! The ONNX graph of a model: which inputs it wants, which output we read, and one run over a
//! right-padded batch followed by pooling.

use std::borrow::Cow;
use std::path::Path;

use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions};
use ort::session::{Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::LoadError;
use super::pooling::{Pooling, l2_normalize};
use super::tokenize::TokenSeq;
use crate::runtime::{Device, Runtime};

/// Graph inputs we know how to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    InputIds,
    AttentionMask,
    TokenTypeIds,
    PositionIds,
}

/// What the chosen output holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    /// `[batch, dim]`, already pooled (and perhaps normalised) inside the graph.
    Pooled,
    /// `[batch, seq, hidden]`, to be pooled here.
    Tokens(Pooling),
}

/// How to run a graph: its pooling and normalisation, and where.
pub struct GraphOptions {
    /// The folder's (or overridden) pooling; ignored when the graph pools itself.
    pub pooling: Option<Pooling>,
    pub normalize: bool,
    pub device: Device,
    pub gpu_mem_limit: Option<u64>,
}

pub struct Encoder {
    /// `Session::run` takes `&mut self`: the encoder belongs to the one thread that runs it.
    session: Session,
    run_options: RunOptions<HasSelectedOutputs>,
    feeds: Vec<(String, Feed)>,
    output: String,
    kind: OutputKind,
    normalize: bool,
    pad_id: i64,
    quantizes_activations: bool,
    device: Device,
}

impl Encoder {
    /// Opens `onnx` on the chosen device and matches its inputs and outputs to what the
    /// model folder said.
    pub fn load(
        runtime: &Runtime,
        onnx: &Path,
        graph: GraphOptions,
        pad_id: u32,
    ) -> Result<Self, LoadError> {
        let fail = |reason: String| LoadError::file(onnx, reason);
        let (mut builder, device) = runtime
            .session_builder(graph.device, graph.gpu_mem_limit)
            .map_err(|e| fail(format!("cannot run it on {}: {e}", graph.device)))?;
        let session = builder
            .commit_from_file(onnx)
            .map_err(|e| fail(format!("ONNX Runtime cannot open it: {e}")))?;
        let GraphOptions {
            pooling, normalize, ..
        } = graph;

        let mut feeds = Vec::new();
        for input in session.inputs() {
            let feed = match input.name() {
                "input_ids" => Feed::InputIds,
                "attention_mask" => Feed::AttentionMask,
                "token_type_ids" => Feed::TokenTypeIds,
                "position_ids" => Feed::PositionIds,
                other => {
                    return Err(fail(format!(
                        "unsupported graph input `{other}` (supported: input_ids, attention_mask, \
                         token_type_ids, position_ids)"
                    )));
                }
            };
            if input.dtype().tensor_type() != Some(TensorElementType::Int64) {
                return Err(fail(format!(
                    "graph input `{}` is {:?}; only int64 inputs are supported",
                    input.name(),
                    input.dtype()
                )));
            }
            feeds.push((input.name().to_string(), feed));
        }
        if !feeds.iter().any(|(_, f)| *f == Feed::InputIds) {
            return Err(fail("the graph has no `input_ids` input".into()));
        }

        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        let (output, kind) = if names.contains(&"sentence_embedding") {
            ("sentence_embedding", OutputKind::Pooled)
        } else {
            let name = ["token_embeddings", "last_hidden_state"]
                .into_iter()
                .find(|n| names.contains(n))
                .ok_or_else(|| {
                    fail(format!(
                        "no supported output among {names:?} (expected sentence_embedding, \
                         token_embeddings or last_hidden_state)"
                    ))
                })?;
            let pooling = pooling.ok_or_else(|| {
                fail(format!(
                    "output `{name}` needs pooling, but the model folder has no Pooling module"
                ))
            })?;
            (name, OutputKind::Tokens(pooling))
        };
        let outlet = &session.outputs()[names.iter().position(|n| *n == output).unwrap_or(0)];
        if !matches!(
            outlet.dtype(),
            ValueType::Tensor {
                ty: TensorElementType::Float32,
                ..
            }
        ) {
            return Err(fail(format!(
                "output `{output}` is {:?}; only float32 outputs are supported",
                outlet.dtype()
            )));
        }
        let run_options = RunOptions::new()
            .map_err(|e| fail(e.to_string()))?
            .with_outputs(OutputSelector::no_default().with(output));

        Ok(Self {
            session,
            run_options,
            feeds,
            output: output.to_string(),
            kind,
            normalize,
            pad_id: i64::from(pad_id),
            quantizes_activations: has_dynamic_quantization(onnx)
                .map_err(|e| fail(format!("cannot read it: {e}")))?,
            device,
        })
    }

    /// Whether the graph quantizes activations with a scale computed from each run's data.
    pub fn quantizes_activations(&self) -> bool {
        self.quantizes_activations
    }

    /// Where the graph runs (never `Auto`: the device `auto` resolved to).
    pub fn device(&self) -> Device {
        self.device
    }

    pub fn output_kind(&self) -> &OutputKind {
        &self.kind
    }

    /// Runs one batch and returns one vector per sequence, in the order given.
    pub fn embed(&mut self, batch: &[&TokenSeq]) -> Result<Vec<Vec<f32>>, ort::Error> {
        let rows = batch.len();
        let cols = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        let shape = [rows, cols];
        let mut ids = vec![self.pad_id; rows * cols];
        let mut mask = vec![0i64; rows * cols];
        for (r, seq) in batch.iter().enumerate() {
            let row = r * cols;
            for (dst, &id) in ids[row..row + seq.len()].iter_mut().zip(&seq.ids) {
                *dst = i64::from(id);
            }
            mask[row..row + seq.len()].fill(1);
        }
        let needs = |feed: Feed| self.feeds.iter().any(|(_, f)| *f == feed);
        let zeros = if needs(Feed::TokenTypeIds) {
            vec![0i64; rows * cols]
        } else {
            Vec::new()
        };
        let positions: Vec<i64> = if needs(Feed::PositionIds) {
            (0..rows).flat_map(|_| 0..cols as i64).collect()
        } else {
            Vec::new()
        };
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(self.feeds.len());
        for (name, feed) in &self.feeds {
            let data: &[i64] = match feed {
                Feed::InputIds => &ids,
                Feed::AttentionMask => &mask,
                Feed::TokenTypeIds => &zeros,
                Feed::PositionIds => &positions,
            };
            inputs.push((
                Cow::Borrowed(name.as_str()),
                TensorRef::from_array_view((shape, data))?.into(),
            ));
        }

        let outputs = self.session.run_with_options(inputs, &self.run_options)?;
        let (out_shape, values) = outputs[self.output.as_str()].try_extract_tensor::<f32>()?;
        let width = *out_shape.last().unwrap_or(&0) as usize;

        let mut vectors = Vec::with_capacity(rows);
        for (r, seq) in batch.iter().enumerate() {
            let mut vector = match &self.kind {
                OutputKind::Pooled => values[r * width..(r + 1) * width].to_vec(),
                OutputKind::Tokens(pooling) => {
                    let per_row = cols * width;
                    let mut v = Vec::with_capacity(width * pooling.modes().len());
                    pooling.pool(
                        &values[r * per_row..(r + 1) * per_row],
                        width,
                        seq.len(),
                        seq.pool_from,
                        &mut v,
                    );
                    v
                }
            };
            if self.normalize {
                l2_normalize(&mut vector);
            }
            vectors.push(vector);
        }
        Ok(vectors)
    }
}

/// Whether the ONNX file uses the `DynamicQuantizeLinear` operator. An operator's type is
/// stored as plain bytes in the protobuf, so a byte search finds it without parsing the graph.
fn has_dynamic_quantization(onnx: &Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(onnx)?;
    Ok(memchr::memmem::find(&bytes, b"DynamicQuantizeLinear").is_some())
}
