//! Loading a model folder: its modules read, the Dense weights or static table loaded, the
//! graph opened on its device behind a batcher, and one probe run end to end.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::encoder::{Encoder, GraphOptions};
use super::head::Head;
use super::kind::{ModelKind, Task};
use super::pooling::Pooling;
use super::router::{RouterConfig, Routes};
use super::source;
use super::st_config::{HeadModule, InputModule, StConfig};
use super::static_embedding::StaticEmbedding;
use super::tokenize::{TextPreparation, TextTokenizer, TruncationDirection};
use super::{
    Backend, Batching, ClassifyInput, ClassifyOptions, EmbedOptions, Input, LoadError, Model,
    ModelSpec, RerankOptions,
};
use crate::batcher::{BatchLimits, Batcher};
use crate::metrics::METRICS;
use crate::runtime::{Device, Runtime};

/// The graph probed at load: a word, since some tokenizers turn "" into no tokens at all.
const PROBE_TEXT: &str = "embedserve";

impl Model {
    /// Loads a model from a local folder.
    pub fn load_dir(spec: &ModelSpec, dir: &Path, runtime: &Runtime) -> Result<Self, LoadError> {
        if !dir.is_dir() {
            return Err(LoadError::file(dir, "not a directory"));
        }
        if let Some(router) = RouterConfig::read(dir)? {
            return Self::load_router(spec, dir, runtime, router);
        }
        Self::load_pipeline(spec, dir, runtime, StConfig::read(dir)?)
    }

    /// Each route as a model of its own (its transformer's files in its first module's
    /// folder), the default route holding the others.
    fn load_router(
        spec: &ModelSpec,
        dir: &Path,
        runtime: &Runtime,
        router: RouterConfig,
    ) -> Result<Self, LoadError> {
        let mut loaded = BTreeMap::new();
        for (route, modules) in &router.routes {
            let files = dir.join(&modules[0].path);
            let st = StConfig::of_modules(dir, &files, modules)?;
            loaded.insert(
                route.clone(),
                Self::load_pipeline(spec, &files, runtime, st)?,
            );
        }
        let mut model = loaded
            .remove(&router.default_route)
            .ok_or_else(|| LoadError::Config(format!("{}: no default route", dir.display())))?;
        model.dir = dir.to_path_buf();
        model.routes = Routes {
            by_type: loaded
                .into_iter()
                .map(|(route, model)| (route, Arc::new(model)))
                .collect(),
        };
        Ok(model)
    }

    /// The model the modules of `st` make, its files in `dir`, probed once.
    fn load_pipeline(
        spec: &ModelSpec,
        dir: &Path,
        runtime: &Runtime,
        st: StConfig,
    ) -> Result<Self, LoadError> {
        let kind = ModelKind::read(dir, &st)?;
        let modules = match kind.cross_encoder() {
            // A cross-encoder's logits are its output: nothing pools or follows them.
            Some(_) => Vec::new(),
            None => head_modules(&st, spec.config.normalize),
        };
        let head = Head::load(&modules)?;
        let mut model = match &st.input {
            InputModule::Transformer => Self::load_graph(spec, dir, runtime, &st, head, &kind)?,
            InputModule::Static(folder) | InputModule::SparseStatic(folder) => {
                Self::load_static(spec, dir, folder, &st, head)?
            }
        };
        model.kind = kind;
        model.normalizes = modules.last() == Some(&HeadModule::Normalize);
        // Counted from here on: Drop uncounts it, also when the probe fails.
        let device = model.device.to_string();
        METRICS
            .model_device
            .with_label_values(&[model.name.as_str(), device.as_str()])
            .inc();
        let what = match &model.onnx_file {
            Some(file) => dir.join(file),
            None => dir.to_path_buf(),
        };
        // One real run proves the model works end to end and tells its output width.
        let failed = |e| LoadError::file(&what, format!("a test run failed: {e}"));
        model.dimension = match model.task() {
            Task::Rerank => {
                let options = RerankOptions {
                    truncate: None,
                    max_tokens: usize::MAX,
                    max_tokens_per_document: None,
                    truncation_direction: TruncationDirection::Right,
                };
                model
                    .rerank_blocking(PROBE_TEXT, &[PROBE_TEXT.to_string()], &options)
                    .map_err(failed)?;
                1
            }
            Task::Classification => {
                let options = ClassifyOptions {
                    truncate: None,
                    max_tokens: usize::MAX,
                    truncation_direction: TruncationDirection::Right,
                };
                let probe = ClassifyInput::Text(PROBE_TEXT.to_string());
                let classified = model
                    .classify_blocking(&[probe], &options)
                    .map_err(failed)?;
                classified.labels.len()
            }
            Task::SparseEmbedding => {
                model
                    .vectors_blocking(&[Input::Text(PROBE_TEXT.into())], &EmbedOptions::default())
                    .map_err(failed)?;
                // Its runs give only the non-zero weights: its vectors span the vocabulary.
                model.tokenizer.vocab_size()
            }
            Task::Embedding => {
                let probe = model
                    .embed_blocking(&[Input::Text(PROBE_TEXT.into())], &EmbedOptions::default())
                    .map_err(failed)?;
                probe.vectors[0].len()
            }
        };
        Ok(model)
    }

    fn load_graph(
        spec: &ModelSpec,
        dir: &Path,
        runtime: &Runtime,
        st: &StConfig,
        head: Head,
        kind: &ModelKind,
    ) -> Result<Self, LoadError> {
        let settings = &spec.config;
        let onnx_file = match &settings.onnx_file {
            Some(file) => file.clone(),
            None => source::DEFAULT_ONNX_FILES
                .into_iter()
                .find(|f| dir.join(f).is_file())
                .unwrap_or(source::DEFAULT_ONNX_FILES[0])
                .to_string(),
        };
        let onnx = dir.join(&onnx_file);
        if !onnx.is_file() {
            return Err(LoadError::file(
                &onnx,
                "missing (set `onnx_file` to choose another graph)",
            ));
        }
        let max_seq_length = settings
            .max_seq_length
            .or(st.max_seq_length)
            .ok_or_else(|| {
                LoadError::Config(format!(
                    "{}: cannot tell the maximum sequence length (no sentence_bert_config.json, \
                 tokenizer_config.json or config.json gives one); set `max_seq_length`",
                    dir.display()
                ))
            })?;
        let pooling = match kind.cross_encoder() {
            Some(_) => None,
            None => settings.pooling.map(Pooling::single).or(st.pooling.clone()),
        };

        let tokenizer = TextTokenizer::load(
            &dir.join("tokenizer.json"),
            TextPreparation::Transformer {
                max_seq_length,
                do_lower_case: st.do_lower_case,
            },
        )?;
        let graph = GraphOptions {
            pooling: pooling.clone(),
            head,
            kind,
            device: settings.device.unwrap_or_default(),
            gpu_mem_limit: settings.gpu_mem_limit,
        };
        let mut encoder = Encoder::load(runtime, &onnx, graph, tokenizer.pad_id)?;
        let device = encoder.device();
        let dtype = encoder.output_dtype();
        tracing::info!(model = %spec.name, %device, "{} runs on {device}", spec.name);
        let embeds_empty = encoder.embeds_empty_sequences();
        let token_width = encoder.token_width();
        let batching = settings.batching.unwrap_or_else(|| {
            if encoder.quantizes_activations() {
                Batching::Isolated
            } else {
                Batching::Dynamic
            }
        });
        tracing::info!(
            model = %spec.name,
            "batching {}: {}",
            match batching {
                Batching::Dynamic => "dynamic",
                Batching::Isolated => "isolated",
            },
            match (settings.batching, batching) {
                (Some(_), _) => "set in the configuration",
                (None, Batching::Isolated) =>
                    "the graph quantizes activations per run (DynamicQuantizeLinear), so batch-mates would change its vectors",
                (None, Batching::Dynamic) => "the graph's rows are independent of each other",
            }
        );
        let limits = settings.batch_limits(matches!(device, Device::Cuda(_)));
        let limits = match batching {
            Batching::Dynamic => limits,
            Batching::Isolated => BatchLimits {
                max_batch_size: 1,
                ..limits
            },
        };
        let mut lane = runtime.lane(device, &spec.name);
        encoder.measure_run_shapes(max_seq_length, &limits, tokenizer.filler_id(), &mut lane);
        let batcher = Batcher::start(&spec.name, encoder, limits, Some(lane))
            .map_err(|e| LoadError::Source(format!("cannot start the batcher thread: {e}")))?;
        let mut excluded_prompt_lengths = BTreeMap::new();
        if !st.include_prompt {
            for (name, prompt) in &st.prompts {
                let length = tokenizer
                    .prompt_length(prompt)
                    .map_err(|e| LoadError::file(dir.join("tokenizer.json"), e.to_string()))?;
                excluded_prompt_lengths.insert(name.clone(), length);
            }
        }
        let mut model = Self::common(spec, dir, st, tokenizer, Backend::Graph(batcher));
        model.onnx_file = Some(onnx_file);
        model.token_width = token_width;
        model.max_seq_length = Some(max_seq_length);
        model.excluded_prompt_lengths = excluded_prompt_lengths;
        model.embeds_empty = embeds_empty;
        model.device = device;
        model.pooling = pooling;
        model.dtype = dtype;
        Ok(model)
    }

    fn load_static(
        spec: &ModelSpec,
        dir: &Path,
        folder: &Path,
        st: &StConfig,
        head: Head,
    ) -> Result<Self, LoadError> {
        let sparse = matches!(st.input, InputModule::SparseStatic(_));
        // A sparse table truncates where its tokenizer's config says, as sentence-transformers
        // tokenizes for it.
        let max_length = if sparse { st.max_seq_length } else { None };
        let preparation = TextPreparation::Static { max_length };
        let tokenizer = TextTokenizer::load(&folder.join("tokenizer.json"), preparation)?;
        let table = if sparse {
            StaticEmbedding::load_weights(folder, tokenizer.vocab_size())?
        } else {
            StaticEmbedding::load(folder, head, tokenizer.vocab_size())?
        };
        tracing::info!(model = %spec.name, "{} is a static embedding table: no graph, no batcher", spec.name);
        let max_length = tokenizer.max_length();
        let mut model = Self::common(spec, dir, st, tokenizer, Backend::Static(table));
        model.max_seq_length = max_length;
        Ok(model)
    }

    /// The fields every kind of model sets alike.
    fn common(
        spec: &ModelSpec,
        dir: &Path,
        st: &StConfig,
        tokenizer: TextTokenizer,
        backend: Backend,
    ) -> Self {
        Self {
            name: spec.name.clone(),
            dir: dir.to_path_buf(),
            onnx_file: None,
            dimension: 0,
            max_seq_length: None,
            prompts: st.prompts.clone(),
            excluded_prompt_lengths: BTreeMap::new(),
            default_prompt_name: st.default_prompt_name.clone(),
            token_input: spec.config.token_input.unwrap_or_default(),
            truncate: spec.config.truncate.unwrap_or(true),
            embeds_empty: true,
            tokenizer,
            backend,
            kind: ModelKind::Embedding,
            token_width: None,
            routes: Routes::default(),
            input_type: spec.config.input_type,
            pooling: None,
            normalizes: false,
            dtype: "float32",
            int8: Default::default(),
            device: Device::Cpu,
        }
    }
}

/// The folder's modules after pooling, with the configuration's `normalize` applied: `true`
/// adds a final Normalize, `false` removes them.
fn head_modules(st: &StConfig, normalize: Option<bool>) -> Vec<HeadModule> {
    let mut modules = st.head.clone();
    match normalize {
        Some(false) => modules.retain(|m| *m != HeadModule::Normalize),
        Some(true) if !st.normalizes() => modules.push(HeadModule::Normalize),
        _ => {}
    }
    modules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normalize_setting_adds_or_removes_the_module() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/zoo/distilbert-dense");
        let st = StConfig::read(&dir).unwrap();
        let dense = HeadModule::Dense(dir.join("2_Dense"));
        assert_eq!(head_modules(&st, None), std::slice::from_ref(&dense));
        assert_eq!(
            head_modules(&st, Some(true)),
            [dense.clone(), HeadModule::Normalize]
        );
        let labse = StConfig::read(&dir.with_file_name("bert-labse")).unwrap();
        assert_eq!(head_modules(&labse, Some(true)), labse.head);
        assert_eq!(head_modules(&labse, Some(false)).len(), 1);
    }
}
