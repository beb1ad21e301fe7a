//! The ONNX graph of a model: which inputs it wants, which output we read, and one run over a
//! right-padded batch followed by pooling and the modules after it.

use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use half::f16;
use half::slice::HalfFloatSliceExt;
use ort::session::{HasSelectedOutputs, OutputSelector, RunOptions, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::LoadError;
use super::head::Head;
use super::kind::ModelKind;
use super::pooling::Pooling;
use super::respin::AdaptiveSession;
use super::run_shape::RunShapes;
use super::sparse;
use super::splade::SpladePooling;
use super::tokenize::TokenSeq;
use crate::batcher::BatchLimits;
use crate::runtime::{Device, Runtime};
use crate::scheduler::Lane;

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
enum OutputKind {
    /// `[batch, dim]`, already pooled (and perhaps normalised) inside the graph; or a
    /// cross-encoder's `[batch, labels]` logits.
    Pooled,
    /// `[batch, seq, hidden]`, to be pooled here.
    Tokens(Pooling),
    /// A masked-language-model head's `[batch, seq, vocabulary]` logits, SPLADE-pooled here.
    Sparse(SpladePooling),
}

/// The most bytes a sparse encoder's logits may take in one run: they are rows × tokens ×
/// vocabulary floats (32 × 256 × 30,522 would be 1 GB), so runs of long inputs hold fewer
/// rows. ONNX Runtime holds the logits and the buffer before their bias: about twice this.
const SPARSE_LOGITS_BUDGET: usize = 128 << 20;

/// How to run a graph: its model's kind, its pooling and the modules after it, and where.
pub struct GraphOptions<'a> {
    /// A cross-encoder's or a sparse encoder's graph is read at its `logits` output: one
    /// row of label scores per pair, or a masked-language-model head's, SPLADE-pooled here.
    pub kind: &'a ModelKind,
    /// The folder's (or overridden) pooling; ignored when the graph pools itself.
    pub pooling: Option<Pooling>,
    pub head: Head,
    pub device: Device,
    pub gpu_mem_limit: Option<u64>,
}

pub struct Encoder {
    /// `Session::run` takes `&mut self`: the encoder belongs to the one thread that runs it.
    session: AdaptiveSession,
    run_options: RunOptions<HasSelectedOutputs>,
    feeds: Vec<(String, Feed)>,
    output: String,
    kind: OutputKind,
    /// float16 outputs (fp16 exports) are widened into `widened` once per run.
    half_output: bool,
    widened: Vec<f32>,
    /// The output's last dimension: as declared, then as the last run gave it (for batches
    /// of empty sequences only, which pool to zeros without a run).
    output_width: usize,
    head: Head,
    pad_id: i64,
    quantizes_activations: bool,
    device: Device,
    shapes: RunShapes,
}

impl crate::batcher::Engine for Encoder {
    type Input = TokenSeq;
    type Output = Vec<f32>;

    fn tokens(seq: &TokenSeq) -> usize {
        seq.len()
    }

    fn run(&mut self, batch: &[&TokenSeq]) -> anyhow::Result<Vec<Vec<f32>>> {
        self.embed(batch)
    }

    fn idle_spin(&self) -> std::time::Duration {
        self.session.idle_spin()
    }

    fn max_rows(&self, columns: usize) -> usize {
        let rows = self.shapes.max_rows(columns);
        match self.kind {
            OutputKind::Sparse(_) => {
                let row_bytes = columns.max(1) * self.output_width.max(1) * size_of::<f32>();
                rows.min((SPARSE_LOGITS_BUDGET / row_bytes).max(1))
            }
            _ => rows,
        }
    }
}

impl Encoder {
    /// Opens `onnx` on the chosen device and matches its inputs and outputs to what the
    /// model folder said.
    pub fn load(
        runtime: &Runtime,
        onnx: &Path,
        graph: GraphOptions<'_>,
        pad_id: u32,
    ) -> Result<Self, LoadError> {
        let fail = |reason: String| LoadError::file(onnx, reason);
        let (mut builder, device) = runtime
            .session_builder(graph.device, graph.gpu_mem_limit)
            .map_err(|e| fail(format!("cannot run it on {}: {e}", graph.device)))?;
        let session = builder
            .commit_from_file(onnx)
            .map_err(|e| fail(format!("ONNX Runtime cannot open it: {e}")))?;

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
        let logits = |what: &str| {
            if names.contains(&"logits") {
                Ok("logits")
            } else {
                Err(fail(format!(
                    "the folder describes {what}, but the graph has no `logits` output (it has \
                     {names:?})"
                )))
            }
        };
        let (output, kind) = if let ModelKind::SparseEmbedding { splade, .. } = graph.kind {
            let splade = splade.ok_or_else(|| {
                fail("a sparse encoder's graph needs SpladePooling to read its logits".into())
            })?;
            (logits("a sparse encoder")?, OutputKind::Sparse(splade))
        } else if graph.kind.cross_encoder().is_some() {
            (logits("a cross-encoder")?, OutputKind::Pooled)
        } else if names.contains(&"sentence_embedding") {
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
            let pooling = graph.pooling.ok_or_else(|| {
                fail(format!(
                    "output `{name}` needs pooling, but the model folder has no Pooling module"
                ))
            })?;
            (name, OutputKind::Tokens(pooling))
        };
        let outlet = &session.outputs()[names.iter().position(|n| *n == output).unwrap_or(0)];
        let ValueType::Tensor {
            ty: ty @ (TensorElementType::Float32 | TensorElementType::Float16),
            shape,
            ..
        } = outlet.dtype()
        else {
            return Err(fail(format!(
                "output `{output}` is {:?}; only float32 and float16 outputs are supported",
                outlet.dtype()
            )));
        };
        let half_output = *ty == TensorElementType::Float16;
        let width = shape.last().and_then(|&d| usize::try_from(d).ok());
        let head = match (&kind, graph.head.has_dense()) {
            (OutputKind::Pooled, true) => graph_head(graph.head, width).map_err(fail)?,
            _ => graph.head,
        };
        let run_options = RunOptions::new()
            .map_err(|e| fail(e.to_string()))?
            .with_outputs(OutputSelector::no_default().with(output));

        Ok(Self {
            run_options,
            feeds,
            output: output.to_string(),
            kind,
            half_output,
            widened: Vec::new(),
            output_width: width.unwrap_or(0),
            head,
            pad_id: i64::from(pad_id),
            quantizes_activations: has_dynamic_quantization(onnx)
                .map_err(|e| fail(format!("cannot read it: {e}")))?,
            device,
            session: AdaptiveSession::new(session, runtime, device, onnx.to_path_buf()),
            shapes: RunShapes::default(),
        })
    }

    /// Finds the rows per run each length is cheapest in (`RunShapes`), on the CPU, by
    /// running sequences of `filler` tokens up to `max_length` within `limits`. A graph that
    /// fails the synthetic runs keeps the plain limits; its requests will say what fails.
    /// Each run takes its turn on `lane`, beside the models already serving.
    pub fn measure_run_shapes(
        &mut self,
        max_length: usize,
        limits: &BatchLimits,
        filler: u32,
        lane: &mut Lane,
    ) {
        // A sparse encoder's runs are bounded by the memory of their logits instead
        // (`max_rows`): measuring runs of every shape would allocate gigabytes.
        if self.device != Device::Cpu
            || limits.max_batch_size < 2
            || matches!(self.kind, OutputKind::Sparse(_))
        {
            return;
        }
        let run = |rows: usize, columns: usize| {
            let seq = TokenSeq {
                ids: vec![filler; columns],
                type_ids: Vec::new(),
                pool_from: 0,
                unpooled: false,
            };
            let batch = vec![&seq; rows];
            let _turn = lane.turn();
            let started = Instant::now();
            self.embed(&batch)?;
            Ok(started.elapsed())
        };
        let started = Instant::now();
        match RunShapes::measure(
            run,
            max_length,
            limits.max_batch_size,
            limits.max_batch_tokens,
        ) {
            Ok(shapes) => {
                tracing::info!(?shapes, took = ?started.elapsed(), "measured the run shapes");
                self.shapes = shapes;
            }
            Err(error) => tracing::warn!(%error, "cannot measure the run shapes"),
        }
        let _turn = lane.turn();
        if let Err(error) = self.shrink_arena(filler) {
            tracing::warn!(%error, "cannot shrink the arena after measuring the run shapes");
        }
    }

    /// Hands back what ONNX Runtime's arena grew to for the largest measuring run (about
    /// 190 MiB for all-MiniLM-L6-v2), with one small run that shrinks it: a model then holds
    /// what its own runs have needed, as it did before they were measured.
    fn shrink_arena(&mut self, filler: u32) -> anyhow::Result<()> {
        const SHRINK: &str = "memory.enable_memory_arena_shrinkage";
        let seq = TokenSeq {
            ids: vec![filler],
            type_ids: Vec::new(),
            pool_from: 0,
            unpooled: false,
        };
        self.run_options.set(SHRINK, "cpu:0")?;
        let shrunk = self.embed(&[&seq]);
        self.run_options.set(SHRINK, "")?;
        shrunk.map(drop)
    }

    /// The width of each token's vector, for a graph whose token embeddings are pooled here
    /// (`None` where the graph pools, scores or gives logits).
    pub fn token_width(&self) -> Option<usize> {
        matches!(self.kind, OutputKind::Tokens(_) if self.output_width > 0)
            .then_some(self.output_width)
    }

    /// Whether the graph quantizes activations with a scale computed from each run's data.
    pub fn quantizes_activations(&self) -> bool {
        self.quantizes_activations
    }

    /// The element type of the output read: `float16` for fp16 exports, else `float32`.
    pub fn output_dtype(&self) -> &'static str {
        if self.half_output {
            "float16"
        } else {
            "float32"
        }
    }

    /// Where the graph runs (never `Auto`: the device `auto` resolved to).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether the graph can embed a sequence of no tokens (one whose tokenizer adds no
    /// special tokens, given ""): only by pooling it here, to the zeros sentence-transformers
    /// gives, without running the graph on it.
    pub fn embeds_empty_sequences(&self) -> bool {
        matches!(&self.kind, OutputKind::Tokens(pooling) if pooling.pools_empty())
    }

    /// Runs one batch and returns one vector per sequence, in the order given. Sequences of
    /// no tokens stay out of the run (a graph cannot take them) and pool to zeros.
    pub fn embed(&mut self, batch: &[&TokenSeq]) -> anyhow::Result<Vec<Vec<f32>>> {
        let running: Vec<&TokenSeq> = batch.iter().copied().filter(|s| !s.is_empty()).collect();
        if running.len() < batch.len() && !self.embeds_empty_sequences() {
            anyhow::bail!("the graph cannot embed a sequence of no tokens");
        }
        let cols = running.iter().map(|s| s.len()).max().unwrap_or(0);
        let padded = Padded::new(&running, cols, self.pad_id, &self.feeds);
        // The fields are borrowed one by one: the run's outputs borrow the session while the
        // output is pooled.
        let Self {
            session,
            run_options,
            feeds,
            output,
            kind,
            half_output,
            widened,
            output_width,
            head,
            ..
        } = self;
        let outputs;
        let values: &[f32] = if running.is_empty() {
            &[]
        } else {
            let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
                Vec::with_capacity(feeds.len());
            for (name, feed) in feeds.iter() {
                inputs.push((
                    Cow::Borrowed(name.as_str()),
                    TensorRef::from_array_view(([running.len(), cols], padded.feed(*feed)))?.into(),
                ));
            }
            outputs = session.run(|session| session.run_with_options(inputs, run_options))??;
            let tensor = &outputs[output.as_str()];
            if *half_output {
                let (shape, halves) = tensor.try_extract_tensor::<f16>()?;
                widened.resize(halves.len(), 0.0);
                halves.convert_to_f32_slice(widened);
                *output_width = last_dim(shape);
                &widened[..]
            } else {
                let (shape, values) = tensor.try_extract_tensor::<f32>()?;
                *output_width = last_dim(shape);
                values
            }
        };
        let out_width = *output_width;

        let (pooled, width) = match kind {
            OutputKind::Pooled => (values.to_vec(), out_width),
            // Only the positive weights leave the run (`sparse::pack`); nothing follows pooling.
            OutputKind::Sparse(splade) => {
                let per_row = cols * out_width;
                let mut rows = values.chunks_exact(per_row.max(1));
                let mut weights = Vec::with_capacity(out_width);
                return Ok(batch
                    .iter()
                    .map(|seq| {
                        let logits = if seq.is_empty() {
                            &[][..]
                        } else {
                            rows.next().unwrap_or_default()
                        };
                        weights.clear();
                        splade.pool(logits, out_width, seq.len(), &mut weights);
                        sparse::pack((0..).zip(weights.iter().copied()))
                    })
                    .collect());
            }
            OutputKind::Tokens(pooling) => {
                let mut pooled =
                    Vec::with_capacity(batch.len() * out_width * pooling.modes().len());
                let per_row = cols * out_width;
                let mut rows = values.chunks_exact(per_row.max(1));
                // Rows that want every token's vector skip pooling and the modules after it.
                let mut unpooled = Vec::new();
                for (i, seq) in batch.iter().enumerate() {
                    let tokens = if seq.is_empty() {
                        &[][..]
                    } else {
                        rows.next().unwrap_or_default()
                    };
                    if seq.unpooled {
                        unpooled.push((i, tokens[..seq.len() * out_width].to_vec()));
                    } else {
                        pooling.pool(tokens, out_width, seq.len(), seq.pool_from, &mut pooled);
                    }
                }
                let width = out_width * pooling.modes().len();
                if !unpooled.is_empty() {
                    let pooled_rows = batch.len() - unpooled.len();
                    let mut vectors = head
                        .apply(pooled, pooled_rows, width)
                        .map_err(anyhow::Error::msg)?
                        .into_iter();
                    let mut unpooled = unpooled.into_iter().peekable();
                    return Ok((0..batch.len())
                        .map(|i| match unpooled.next_if(|(row, _)| *row == i) {
                            Some((_, tokens)) => tokens,
                            None => vectors.next().unwrap_or_default(),
                        })
                        .collect());
                }
                (pooled, width)
            }
        };
        head.apply(pooled, batch.len(), width)
            .map_err(anyhow::Error::msg)
    }
}

fn last_dim(shape: &ort::value::Shape) -> usize {
    shape.last().map_or(0, |&d| d as usize)
}

/// A batch's graph inputs, right-padded to `cols`.
struct Padded {
    ids: Vec<i64>,
    mask: Vec<i64>,
    /// When the graph takes `token_type_ids`: each pair's segment ids, zeros elsewhere.
    types: Vec<i64>,
    /// `0..cols` per row, when the graph takes `position_ids`.
    positions: Vec<i64>,
}

impl Padded {
    fn new(batch: &[&TokenSeq], cols: usize, pad_id: i64, feeds: &[(String, Feed)]) -> Self {
        let rows = batch.len();
        let mut ids = vec![pad_id; rows * cols];
        let mut mask = vec![0i64; rows * cols];
        for (r, seq) in batch.iter().enumerate() {
            let row = r * cols;
            for (dst, &id) in ids[row..row + seq.len()].iter_mut().zip(&seq.ids) {
                *dst = i64::from(id);
            }
            mask[row..row + seq.len()].fill(1);
        }
        let needs = |feed: Feed| feeds.iter().any(|(_, f)| *f == feed);
        let types = if needs(Feed::TokenTypeIds) {
            let mut types = vec![0i64; rows * cols];
            for (r, seq) in batch.iter().enumerate() {
                let row = r * cols;
                for (dst, &id) in types[row..row + seq.type_ids.len()]
                    .iter_mut()
                    .zip(&seq.type_ids)
                {
                    *dst = i64::from(id);
                }
            }
            types
        } else {
            Vec::new()
        };
        let positions = if needs(Feed::PositionIds) {
            (0..rows).flat_map(|_| 0..cols as i64).collect()
        } else {
            Vec::new()
        };
        Self {
            ids,
            mask,
            types,
            positions,
        }
    }

    fn feed(&self, feed: Feed) -> &[i64] {
        match feed {
            Feed::InputIds => &self.ids,
            Feed::AttentionMask => &self.mask,
            Feed::TokenTypeIds => &self.types,
            Feed::PositionIds => &self.positions,
        }
    }
}

/// The head to apply after a graph that pools itself (`sentence_embedding`): exporters such as
/// optimum put the Dense layers inside the graph, so the output's width tells whether they ran.
fn graph_head(head: Head, width: Option<usize>) -> Result<Head, String> {
    match width {
        Some(w) if Some(w) == head.output_width() => Ok(head.without_dense()),
        Some(w) if Some(w) == head.input_width() => Ok(head),
        Some(w) => Err(format!(
            "`sentence_embedding` has {w} values, which neither the Dense modules' input ({:?}) \
             nor their output ({:?}) is",
            head.input_width(),
            head.output_width()
        )),
        // A dynamic width: take the exporters' convention, the whole pipeline in the graph.
        None => Ok(head.without_dense()),
    }
}

/// Whether the ONNX file uses the `DynamicQuantizeLinear` operator. An operator's type is
/// stored as plain bytes in the protobuf, so a byte search finds it without parsing the graph.
fn has_dynamic_quantization(onnx: &Path) -> std::io::Result<bool> {
    let bytes = std::fs::read(onnx)?;
    Ok(memchr::memmem::find(&bytes, b"DynamicQuantizeLinear").is_some())
}
