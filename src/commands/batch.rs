//! The `batch` subcommand: a batch file run with no server, by the same job engine and
//! routes as `/v1/batches`, with a progress bar. Its state lives beside the output
//! (`OUTPUT.progress/`) until the job is over, so running the same command again after a
//! crash resumes it where it stopped.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::api::{self, AppState, Readiness, RouterRunner};
use crate::batch::engine::{self, LineRunner};
use crate::batch::{BatchObject, BatchStatus, Batches};
use crate::config::Config;

/// Runs the requests of `input` (OpenAI's batch lines) with the one model in `config`,
/// writing their results to `output` and the failed ones beside it (`.errors.jsonl`).
pub async fn batch(config: Config, input: &Path, output: &Path) -> anyhow::Result<()> {
    let state_dir = with_suffix(output, ".progress");
    let (cache, model) = super::the_model(&config).await?;
    let model = model.name().to_string();
    let (settings, max_line) = (config.batches.clone(), config.server.max_body_bytes);
    let dir = state_dir.clone();
    let batches =
        tokio::task::spawn_blocking(move || Batches::open(&dir, settings, max_line, None))
            .await??;
    let state = AppState {
        batches: Some(batches.clone()),
        ..crate::server::app_state(&config, cache, Arc::new(Readiness::not_ready("")))
    };
    state.ready.set_ready();
    let runner = WithModel {
        lines: RouterRunner(api::router(Arc::new(state))),
        model,
    };

    let b = batches.clone();
    let input_path = input.to_path_buf();
    let (job, resumed) =
        tokio::task::spawn_blocking(move || resume_or_start(&b, &input_path)).await??;
    if resumed {
        eprintln!(
            "resuming from {}: {} of {} lines done",
            state_dir.display(),
            job.request_counts.completed + job.request_counts.failed,
            job.request_counts.total
        );
    }
    let engine = tokio::spawn(engine::run(batches.clone(), Arc::new(runner)));
    let done = follow(&batches, &job.id).await;
    engine.abort();
    let done = done?;
    if done.status != BatchStatus::Completed {
        bail!(
            "the batch ended {}: {}",
            done.status.as_str(),
            done.errors.map(|e| e.to_string()).unwrap_or_default()
        );
    }
    let errors_path = with_suffix(output, ".errors.jsonl");
    let b = batches.clone();
    let (output, done_c) = (output.to_path_buf(), done.clone());
    tokio::task::spawn_blocking(move || deliver(&b, &done_c, &output, &errors_path)).await??;
    drop(batches);
    std::fs::remove_dir_all(&state_dir)
        .with_context(|| format!("cannot remove {}", state_dir.display()))?;
    let counts = done.request_counts;
    eprintln!(
        "{} lines: {} answered, {} failed",
        counts.total, counts.completed, counts.failed
    );
    Ok(())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The job in the state directory (resumed), or a new one over a copy of `input`.
fn resume_or_start(batches: &Batches, input: &Path) -> anyhow::Result<(BatchObject, bool)> {
    if let Some(job) = batches.batches("", None, 1)?.0.into_iter().next() {
        return Ok((job, true));
    }
    let copy = batches.upload_path();
    std::fs::copy(input, &copy).with_context(|| format!("cannot read {}", input.display()))?;
    let name = input
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().to_string());
    let file = batches.add_file(&copy, &name, "batch", "")?;
    Ok((batches.create_local_batch(&file.id)?, false))
}

/// Shows the job's progress until it is over.
async fn follow(batches: &Arc<Batches>, id: &str) -> anyhow::Result<BatchObject> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} lines, {per_sec}, {eta} left")
            .expect("a valid template"),
    );
    loop {
        let (b, id_c) = (batches.clone(), id.to_string());
        let job = tokio::task::spawn_blocking(move || b.batch(&id_c, "")).await??;
        let counts = job.request_counts;
        bar.set_length(counts.total);
        bar.set_position(counts.completed + counts.failed);
        if job.status.is_final() {
            bar.finish_and_clear();
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Copies the results where they were asked for.
fn deliver(
    batches: &Batches,
    job: &BatchObject,
    output: &Path,
    errors: &Path,
) -> anyhow::Result<()> {
    for (id, to) in [(&job.output_file_id, output), (&job.error_file_id, errors)] {
        if let Some(id) = id {
            let from = batches.file_path(id, "")?;
            std::fs::copy(&from, to).with_context(|| format!("cannot write {}", to.display()))?;
        }
    }
    Ok(())
}

/// Lines that name no model are for the one loaded.
struct WithModel {
    lines: RouterRunner,
    model: String,
}

impl LineRunner for WithModel {
    fn run(
        &self,
        url: String,
        body: Box<RawValue>,
    ) -> Pin<Box<dyn Future<Output = (u16, Box<RawValue>)> + Send>> {
        let body = match serde_json::from_str::<Map<String, Value>>(body.get()) {
            Ok(mut fields) if !fields.contains_key("model") => {
                fields.insert("model".into(), Value::String(self.model.clone()));
                serde_json::value::to_raw_value(&fields).unwrap_or(body)
            }
            _ => body,
        };
        self.lines.run(url, body)
    }
}
