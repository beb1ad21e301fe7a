//! The `embed`, `pull` and `batch` subcommands: the model path without a server.

mod batch;

pub use batch::batch;

use std::io::Write;

use anyhow::{Context, anyhow, bail};

use std::sync::Arc;

use crate::cache::ModelCache;
use crate::config::Config;
use crate::model::{EmbedOptions, Input, Model, ModelSource, source};
use crate::server::start_cache;

/// Embeds `texts` with the one model in `config` and prints one JSON array per line.
pub async fn embed(config: Config, texts: Vec<String>) -> anyhow::Result<()> {
    let (_, model) = the_model(&config).await?;
    let inputs: Vec<Input> = texts.into_iter().map(Input::Text).collect();
    let embedded = model.embed(inputs, EmbedOptions::default()).await?;
    let mut out = std::io::stdout().lock();
    for vector in &embedded.vectors {
        serde_json::to_writer(&mut out, vector)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The model cache of a subcommand's configuration, and its one model, loaded.
async fn the_model(config: &Config) -> anyhow::Result<(Arc<ModelCache>, Arc<Model>)> {
    let cache = Arc::new(start_cache(config).await?);
    let spec = cache
        .catalog()
        .preloads()
        .next()
        .cloned()
        .ok_or_else(|| anyhow!("no model given"))?;
    let model = cache.load(spec).await?;
    Ok((cache, model))
}

/// Downloads a Hub model's files into the Hugging Face cache and prints the snapshot folder.
pub async fn pull(source_id: &str, onnx_file: Option<&str>) -> anyhow::Result<()> {
    let ModelSource::Hub { repo, revision } =
        ModelSource::parse(source_id).map_err(|e| anyhow!(e))?
    else {
        bail!("`{source_id}` is a local folder; pull takes a Hub id `org/name[@revision]`");
    };
    let hub_repo = source::hub_repo(&repo, revision.as_deref());
    let dir = source::download(&hub_repo, onnx_file, true)
        .await
        .with_context(|| format!("cannot pull `{source_id}`"))?;
    println!("{}", dir.display());
    Ok(())
}
