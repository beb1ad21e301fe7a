//! Deadlines. A batch still running `batches.expire_after` after it was created (OpenAI's
//! `24h`) expires as OpenAI's do: each line it has not run goes to its error file with code
//! `batch_expired`, and what ran stays in its output. A file past `batches.file_ttl` is gone,
//! but for the input of a batch not over yet, which is read to its end first.

use super::engine::{Input, Results, Written, line_id, read_chunk};
use super::lines;
use super::objects::{BatchObject, BatchStatus};
use super::store::Progress;
use super::{BatchError, Batches};

/// Lines read at a time while expiring the rest of a batch.
const LINES_PER_CHUNK: usize = 4096;

impl Batches {
    /// Writes the lines `batch` has not run as expired, then ends it `expired`. Safe to
    /// repeat after a crash: the lines count once their progress is saved, in one step, and
    /// the result files are cut back to the saved progress when they are opened again.
    pub(super) fn expire(
        &self,
        batch: &BatchObject,
        mut progress: Progress,
    ) -> Result<(), BatchError> {
        let mut input = Input::open(self, batch, &progress)?;
        let mut results = Results::open(self, &batch.id, &progress)?;
        loop {
            let chunk = read_chunk(
                &mut input,
                &batch.endpoint,
                LINES_PER_CHUNK,
                self.max_line_bytes,
            )?;
            if chunk.is_empty() {
                break;
            }
            let written: Vec<Written> = chunk
                .into_iter()
                .map(|(number, line)| {
                    let id = line_id(&batch.id, number);
                    let result = match line {
                        Ok(request) => lines::expired(&id, &request.custom_id),
                        Err(bad) => lines::refused(&id, &bad),
                    };
                    (false, result)
                })
                .collect();
            results.append(&written, &mut progress)?;
        }
        progress.input_offset = input.offset;
        // A batch expired while validating was never counted: every line is now.
        self.store
            .set_total(&batch.id, progress.completed + progress.failed)?;
        self.store.save_progress(&batch.id, &progress)?;
        self.finalize(batch, &progress, BatchStatus::Expired)
    }

    pub(super) fn remove_expired_files(&self) -> Result<(), BatchError> {
        for id in self.store.expired_files()? {
            self.store.delete_expired_file(&id)?;
            self.dir.remove_file(&id);
        }
        Ok(())
    }
}
