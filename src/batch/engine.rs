//! The job engine: takes the oldest batch with work left and moves it on, a chunk of lines
//! at a time. Each chunk runs its lines at once (so the model's batcher fills whole runs),
//! appends their result lines, syncs them, and only then records how far the batch got; on
//! restart the result files are cut back to what was recorded and the input read on from
//! there, so every line's result is written exactly once whatever instant a crash hits.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use super::lines::{self, BadLine, RequestLine};
use super::objects::{BatchObject, BatchStatus, FileObject};
use super::priority::REQUESTS;
use super::store::Progress;
use super::{BatchError, Batches, blocking, now};
use crate::metrics::METRICS;

/// Runs one request of a batch: the route's status and answer.
pub trait LineRunner: Send + Sync + 'static {
    fn run(
        &self,
        url: String,
        body: Box<RawValue>,
    ) -> Pin<Box<dyn Future<Output = (u16, Box<RawValue>)> + Send>>;
}

/// How often expired files are looked for, and idle engines look again.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Runs batches until the process ends.
pub async fn run(batches: Arc<Batches>, runner: Arc<dyn LineRunner>) {
    let mut swept: Option<Instant> = None;
    loop {
        if swept.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            let b = batches.clone();
            if let Err(e) = blocking(move || b.remove_expired_files()).await {
                tracing::warn!("cannot remove expired files: {e}");
            }
            swept = Some(Instant::now());
        }
        let b = batches.clone();
        let next = blocking(move || {
            b.publish_metrics();
            Ok(b.store.next_active()?)
        })
        .await;
        match next {
            Ok(Some((batch, progress))) => {
                let id = batch.id.clone();
                if let Err(e) = step(&batches, &runner, batch, progress).await {
                    tracing::error!(batch = %id, "batch failed: {e}");
                    let (b, message) = (batches.clone(), e.to_string());
                    let failed = blocking(move || b.fail(&id, "batch_failed", &message)).await;
                    if let Err(e) = failed {
                        tracing::error!("cannot record a batch's failure: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Ok(None) => {
                tokio::select! {
                    () = batches.wake.notified() => {}
                    () = tokio::time::sleep(SWEEP_EVERY) => {}
                }
            }
            Err(e) => {
                tracing::error!("cannot read the batch store: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Moves `batch` one status on (or, in progress, to the end of its lines).
async fn step(
    batches: &Arc<Batches>,
    runner: &Arc<dyn LineRunner>,
    batch: BatchObject,
    progress: Progress,
) -> Result<(), BatchError> {
    let b = batches.clone();
    let running = matches!(
        batch.status,
        BatchStatus::Validating | BatchStatus::InProgress
    );
    if running && now() >= batch.expires_at {
        return blocking(move || b.expire(&batch, progress)).await;
    }
    match batch.status {
        BatchStatus::Validating => blocking(move || b.validate(&batch)).await,
        BatchStatus::InProgress => run_lines(batches, runner, &batch, progress).await,
        BatchStatus::Finalizing => {
            blocking(move || b.finalize(&batch, &progress, BatchStatus::Completed)).await
        }
        BatchStatus::Cancelling => {
            blocking(move || b.finalize(&batch, &progress, BatchStatus::Cancelled)).await
        }
        _ => Ok(()),
    }
}

/// A running batch's input, read on from where it got.
pub(super) struct Input {
    reader: BufReader<File>,
    pub offset: u64,
    /// Lines read so far: the next line's number.
    line: u64,
}

impl Input {
    pub fn open(
        batches: &Batches,
        batch: &BatchObject,
        progress: &Progress,
    ) -> Result<Self, BatchError> {
        let path = batches.dir.file_path(&batch.input_file_id);
        let mut reader = BufReader::new(
            File::open(&path)
                .map_err(|e| BatchError::Storage(format!("the input file is gone: {e}")))?,
        );
        reader.seek(SeekFrom::Start(progress.input_offset))?;
        Ok(Self {
            reader,
            offset: progress.input_offset,
            line: progress.completed + progress.failed,
        })
    }
}

/// The id of a batch's line `number` in its results.
pub(super) fn line_id(batch_id: &str, number: u64) -> String {
    format!(
        "batch_req_{}_{number}",
        batch_id.trim_start_matches("batch_")
    )
}

/// Runs the lines of an `in_progress` batch, a chunk at a time, until its input ends, it
/// is cancelled or it expires.
async fn run_lines(
    batches: &Arc<Batches>,
    runner: &Arc<dyn LineRunner>,
    batch: &BatchObject,
    mut progress: Progress,
) -> Result<(), BatchError> {
    let (b, open) = (batches.clone(), batch.clone());
    let (mut input, mut results) = blocking(move || {
        let input = Input::open(&b, &open, &progress)?;
        Ok((input, Results::open(&b, &open.id, &progress)?))
    })
    .await?;
    let per_chunk = batches.config.lines_in_flight;
    let max_line = batches.max_line_bytes;
    let endpoint = batch.endpoint.clone();
    loop {
        REQUESTS.idle_for(batches.config.idle_gap).await;
        let endpoint = endpoint.clone();
        let (returned, chunk) = blocking(move || {
            let chunk = read_chunk(&mut input, &endpoint, per_chunk, max_line)?;
            Ok((input, chunk))
        })
        .await?;
        input = returned;
        if chunk.is_empty() {
            let b = batches.clone();
            let id = batch.id.clone();
            return blocking(move || {
                b.store.set_status(
                    &id,
                    &[BatchStatus::InProgress],
                    BatchStatus::Finalizing,
                    now(),
                )?;
                Ok(())
            })
            .await;
        }
        let written = run_chunk(runner, &batch.id, chunk).await;
        progress.input_offset = input.offset;
        let (b, id) = (batches.clone(), batch.id.clone());
        // `Progress` is `Copy`: the closure's own is handed back.
        let (returned, saved, status) = blocking(move || {
            results.append(&written, &mut progress)?;
            b.store.save_progress(&id, &progress)?;
            b.publish_metrics();
            let status = b.store.batch(&id, None)?.map(|(batch, _)| batch.status);
            Ok((results, progress, status))
        })
        .await?;
        (results, progress) = (returned, saved);
        if status != Some(BatchStatus::InProgress) || now() >= batch.expires_at {
            return Ok(());
        }
        let b = batches.clone();
        blocking(move || b.check_quota(0)).await?;
    }
}

/// A line read from the input: its number, and its request or why it cannot run.
pub(super) type ReadLine = (u64, Result<RequestLine, BadLine>);

/// Most inputs a chunk's lines hold together (one largest request's worth, as
/// `server.max_inputs_per_request` defaults): their answers are held until the chunk is
/// written, so a chunk of 64 lines of 2,048 inputs would hold a gigabyte of vectors.
const MAX_INPUTS_PER_CHUNK: usize = 2048;

/// Reads up to `count` non-empty lines, or fewer holding `MAX_INPUTS_PER_CHUNK` inputs; a
/// line over `max_line` bytes is skipped unread.
pub(super) fn read_chunk(
    input: &mut Input,
    endpoint: &str,
    count: usize,
    max_line: usize,
) -> Result<Vec<ReadLine>, BatchError> {
    let mut chunk = Vec::with_capacity(count);
    let mut inputs = 0;
    while chunk.len() < count && inputs < MAX_INPUTS_PER_CHUNK {
        let mut line = Vec::new();
        let read = (&mut input.reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if read == 0 {
            break;
        }
        input.offset += read as u64;
        let mut too_long = false;
        if line.last() != Some(&b'\n') && line.len() > max_line {
            too_long = true;
            // The rest of the line, read and dropped.
            loop {
                let buffer = input.reader.fill_buf()?;
                if buffer.is_empty() {
                    break;
                }
                let (used, ended) = match memchr::memchr(b'\n', buffer) {
                    Some(at) => (at + 1, true),
                    None => (buffer.len(), false),
                };
                input.reader.consume(used);
                input.offset += used as u64;
                if ended {
                    break;
                }
            }
        }
        if line.trim_ascii().is_empty() && !too_long {
            continue;
        }
        let number = input.line;
        input.line += 1;
        chunk.push(if too_long {
            (
                number,
                Err(BadLine {
                    custom_id: None,
                    message: format!(
                        "the line is longer than {max_line} bytes (server.max_body_bytes)"
                    ),
                }),
            )
        } else {
            let request = lines::parse(&line, endpoint);
            inputs += request.as_ref().map_or(1, RequestLine::inputs);
            (number, request)
        });
    }
    Ok(chunk)
}

/// A result line, for the output file (`true`) or the error file.
pub(super) type Written = (bool, Vec<u8>);

/// Runs a chunk's lines at once; their result lines, in input order.
async fn run_chunk(
    runner: &Arc<dyn LineRunner>,
    batch_id: &str,
    chunk: Vec<ReadLine>,
) -> Vec<Written> {
    let started: Vec<_> = chunk
        .into_iter()
        .map(|(number, line)| {
            let id = line_id(batch_id, number);
            match line {
                Ok(request) => {
                    let running = runner.run(request.url, request.body);
                    let custom_id = request.custom_id;
                    tokio::spawn(async move {
                        let (status, body) = running.await;
                        (
                            status == 200,
                            lines::answered(&id, &custom_id, status, &body),
                        )
                    })
                }
                Err(bad) => tokio::spawn(async move { (false, lines::refused(&id, &bad)) }),
            }
        })
        .collect();
    let mut written = Vec::with_capacity(started.len());
    for line in started {
        written.push(line.await.unwrap_or_else(|e| {
            let bad = BadLine {
                custom_id: None,
                message: format!("the line's run failed: {e}"),
            };
            (false, lines::refused("batch_req_failed", &bad))
        }));
    }
    let answered = written.iter().filter(|(ok, _)| *ok).count();
    METRICS
        .batch_job_lines
        .with_label_values(&["completed"])
        .inc_by(answered as u64);
    METRICS
        .batch_job_lines
        .with_label_values(&["failed"])
        .inc_by((written.len() - answered) as u64);
    written
}

/// A running batch's two result files, appended to and synced a chunk at a time.
pub(super) struct Results {
    output: File,
    errors: File,
}

impl Results {
    /// Opens them, cut back to the bytes `progress` recorded: what a crash left past that
    /// was never acknowledged, and is written again.
    pub fn open(batches: &Batches, id: &str, progress: &Progress) -> Result<Self, BatchError> {
        let open = |kind: &str, bytes: u64| -> Result<File, BatchError> {
            let path = batches.dir.work_path(id, kind);
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            file.set_len(bytes)?;
            file.seek(SeekFrom::End(0))?;
            Ok(file)
        };
        Ok(Self {
            output: open("output", progress.output_bytes)?,
            errors: open("errors", progress.error_bytes)?,
        })
    }

    pub fn append(
        &mut self,
        written: &[Written],
        progress: &mut Progress,
    ) -> Result<(), BatchError> {
        for (ok, line) in written {
            if *ok {
                self.output.write_all(line)?;
                progress.output_bytes += line.len() as u64;
                progress.completed += 1;
            } else {
                self.errors.write_all(line)?;
                progress.error_bytes += line.len() as u64;
                progress.failed += 1;
            }
        }
        self.output.sync_data()?;
        self.errors.sync_data()?;
        Ok(())
    }
}

impl Batches {
    /// Counts the input's lines: over `batches.max_requests_per_batch` fails the batch.
    fn validate(&self, batch: &BatchObject) -> Result<(), BatchError> {
        let file = File::open(self.dir.file_path(&batch.input_file_id))
            .map_err(|e| BatchError::Storage(format!("the input file is gone: {e}")))?;
        let mut lines = 0u64;
        for line in BufReader::new(file).split(b'\n') {
            if !line?.trim_ascii().is_empty() {
                lines += 1;
            }
        }
        let max = self.config.max_requests_per_batch as u64;
        if lines > max {
            return self.fail(
                &batch.id,
                "too_many_requests",
                &format!(
                    "the input file holds {lines} requests; a batch holds at most {max} \
                     (batches.max_requests_per_batch)"
                ),
            );
        }
        if lines == 0 {
            return self.fail(&batch.id, "empty_file", "the input file holds no requests");
        }
        self.store.set_total(&batch.id, lines)?;
        self.store.set_status(
            &batch.id,
            &[BatchStatus::Validating],
            BatchStatus::InProgress,
            now(),
        )?;
        Ok(())
    }

    /// Fails a batch with one error, keeping what its lines wrote.
    fn fail(&self, id: &str, code: &str, message: &str) -> Result<(), BatchError> {
        let errors = serde_json::json!({
            "object": "list",
            "data": [{"code": code, "message": message, "param": null, "line": null}],
        });
        self.store.set_errors(id, &errors)?;
        let (batch, progress) = self
            .store
            .batch(id, None)?
            .ok_or_else(|| BatchError::no_batch(id))?;
        self.finalize(&batch, &progress, BatchStatus::Failed)
    }

    /// Ends a batch in `status`: its result files move among the owner's files and the
    /// batch is over, in one transaction. Safe to repeat after a crash at any point.
    pub(super) fn finalize(
        &self,
        batch: &BatchObject,
        progress: &Progress,
        status: BatchStatus,
    ) -> Result<(), BatchError> {
        let now = now();
        let mut results = Vec::new();
        for (kind, id, bytes) in [
            (
                "output",
                &batch.planned_output_file_id,
                progress.output_bytes,
            ),
            ("errors", &batch.planned_error_file_id, progress.error_bytes),
        ] {
            let work = self.dir.work_path(&batch.id, kind);
            let kept = self.dir.file_path(id);
            let wanted = bytes > 0 || (kind == "output" && status == BatchStatus::Completed);
            if work.exists() {
                if wanted {
                    settle_result(&work, bytes)?;
                    self.dir.settle(&work, &kept)?;
                } else {
                    std::fs::remove_file(&work)?;
                }
            } else if wanted && !kept.exists() {
                File::create(&kept)?.sync_all()?;
            }
            if wanted {
                results.push(FileObject {
                    id: id.clone(),
                    bytes: bytes as i64,
                    created_at: now,
                    expires_at: Some(now + self.config.file_ttl.as_secs() as i64),
                    filename: format!("{}_{kind}.jsonl", batch.id),
                    purpose: "batch_output".to_string(),
                    ..FileObject::default()
                });
            }
        }
        self.store
            .finish(&batch.id, &batch.owner, &results, status, now)?;
        tracing::info!(
            batch = %batch.id,
            status = status.as_str(),
            completed = progress.completed,
            failed = progress.failed,
            "batch over"
        );
        Ok(())
    }

    /// Batches by status, and the lines they have left, on `/metrics`.
    fn publish_metrics(&self) {
        let Ok(counts) = self.store.status_counts() else {
            return;
        };
        for status in BatchStatus::all() {
            let count = counts
                .iter()
                .find(|(name, _)| name == status.as_str())
                .map_or(0, |(_, count)| *count);
            METRICS
                .batch_jobs
                .with_label_values(&[status.as_str()])
                .set(count);
        }
        if let Ok(left) = self.store.lines_left() {
            METRICS.batch_job_lines_queued.set(left as i64);
        }
    }
}

/// Cuts a finished result file to the bytes recorded and syncs it.
fn settle_result(path: &Path, bytes: u64) -> Result<(), BatchError> {
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(bytes)?;
    file.sync_all()?;
    Ok(())
}
