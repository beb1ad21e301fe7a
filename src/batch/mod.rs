//! OpenAI's Files and Batch API: files uploaded for batches, batch jobs that run their lines
//! through `/v1/embeddings` on the capacity requests leave (`engine`), and their results,
//! all kept in `server.data_dir` (`store` for the state, `disk` for the bytes) so that a crash
//! at any instant loses nothing acknowledged.

mod disk;
pub mod engine;
mod expiry;
pub mod ids;
mod lines;
pub mod objects;
pub mod priority;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::config::BatchesConfig;
use crate::metrics::METRICS;
use disk::DataDir;
pub use objects::{BatchObject, BatchStatus, FileObject};
use store::Store;

/// The endpoints a batch may target.
pub const ENDPOINTS: [&str; 1] = ["/v1/embeddings"];

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{message}")]
    NotFound {
        /// `file_not_found` or `batch_not_found`.
        code: &'static str,
        message: String,
    },
    #[error("{message}")]
    Invalid {
        param: &'static str,
        message: String,
    },
    #[error("{0}")]
    Quota(String),
    /// Too many batches are running: try again once some are over.
    #[error("{0}")]
    Busy(String),
    /// The id names another replica: the router sends calls about it there, and this one
    /// got it only because that replica is out of reach.
    #[error("{0}")]
    Elsewhere(String),
    #[error("the batch store failed: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for BatchError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

impl From<std::io::Error> for BatchError {
    fn from(e: std::io::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

impl BatchError {
    fn no_file(id: &str) -> Self {
        Self::NotFound {
            code: "file_not_found",
            message: format!("no file with id `{id}`"),
        }
    }

    fn no_batch(id: &str) -> Self {
        Self::NotFound {
            code: "batch_not_found",
            message: format!("no batch with id `{id}`"),
        }
    }

    fn elsewhere(id: &str, replica: &str) -> Self {
        Self::Elsewhere(format!(
            "`{id}` is held by replica `{replica}`, which cannot be reached now: try again \
             later"
        ))
    }
}

fn invalid(param: &'static str, message: impl Into<String>) -> BatchError {
    BatchError::Invalid {
        param,
        message: message.into(),
    }
}

/// Who owns a file or batch: a digest of the API key that made it (the key itself is never
/// stored), or nobody in particular when the server has no keys.
pub fn owner_of(api_key: Option<&str>) -> String {
    api_key.map_or_else(String::new, |key| {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    })
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The files and batches of one data directory.
pub struct Batches {
    store: Store,
    dir: DataDir,
    pub config: BatchesConfig,
    /// `server.replica_name`: the replica its ids name.
    replica: Option<String>,
    /// The longest line run (`server.max_body_bytes`, a request's own bound).
    max_line_bytes: usize,
    /// Rung when a batch is created or cancelled: the engine looks again.
    wake: Notify,
    /// Bytes of uploads still arriving (`UploadSpace`).
    uploading: AtomicU64,
}

/// The disk an upload still arriving may take: counted against `batches.max_disk_bytes`
/// with every other upload in flight, as its bytes are announced or arrive, so that many
/// uploads at once cannot fill the disk past the quota before any of them is checked.
pub struct UploadSpace {
    batches: Arc<Batches>,
    /// What files and results held when the upload began.
    held: u64,
    reserved: u64,
}

impl UploadSpace {
    /// Reserves up to `bytes` in all, or refuses the upload over the quota.
    pub fn grow_to(&mut self, bytes: u64) -> Result<(), BatchError> {
        if bytes <= self.reserved {
            return Ok(());
        }
        let more = bytes - self.reserved;
        let uploading = self.batches.uploading.fetch_add(more, Ordering::Relaxed) + more;
        METRICS.batch_upload_bytes.set(uploading as i64);
        self.reserved = bytes;
        let max = self.batches.config.max_disk_bytes;
        if self.held + uploading > max {
            return Err(BatchError::Quota(format!(
                "the data directory holds {} bytes of files and results; with the uploads \
                 arriving, this one included ({uploading} bytes), it would pass its quota of \
                 {max} bytes (batches.max_disk_bytes): delete files first, or upload later",
                self.held
            )));
        }
        Ok(())
    }
}

impl Drop for UploadSpace {
    fn drop(&mut self) {
        let before = self
            .batches
            .uploading
            .fetch_sub(self.reserved, Ordering::Relaxed);
        METRICS
            .batch_upload_bytes
            .set((before - self.reserved) as i64);
    }
}

impl Batches {
    /// Opens (or creates) the data directory and its store, dropping what a crash left
    /// half-written.
    pub fn open(
        root: &Path,
        config: BatchesConfig,
        max_line_bytes: usize,
        replica: Option<String>,
    ) -> anyhow::Result<Arc<Self>> {
        let dir = DataDir::create(root)?;
        let store = Store::open(&dir.store_path())
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", dir.store_path().display()))?;
        let batches = Self {
            store,
            dir,
            config,
            replica,
            max_line_bytes,
            wake: Notify::new(),
            uploading: AtomicU64::new(0),
        };
        batches
            .dir
            .remove_orphans(|id| batches.store.known_file(id).unwrap_or(true))?;
        Ok(Arc::new(batches))
    }

    fn new_id(&self, prefix: &str) -> String {
        ids::new_id(prefix, self.replica.as_deref())
    }

    /// The error for an id this replica does not hold: `not_here` when it is (or would be)
    /// this replica's, unavailable when another replica holds it.
    fn missing(&self, id: &str, not_here: impl FnOnce(&str) -> BatchError) -> BatchError {
        match ids::replica_of(id) {
            Some(replica) if Some(replica) != self.replica.as_deref() => {
                BatchError::elsewhere(id, replica)
            }
            _ => not_here(id),
        }
    }

    /// Room for an upload to arrive in, to hold until `add_file` has kept it.
    pub fn upload_space(self: &Arc<Self>) -> Result<UploadSpace, BatchError> {
        Ok(UploadSpace {
            batches: self.clone(),
            held: self.store.bytes_held()?,
            reserved: 0,
        })
    }

    /// A fresh path to write an upload to before `add_file` keeps it.
    pub fn upload_path(&self) -> PathBuf {
        self.dir.temp_path()
    }

    /// Keeps the upload written at `temp` as a file of `owner`, once the disk quota allows.
    pub fn add_file(
        &self,
        temp: &Path,
        filename: &str,
        purpose: &str,
        owner: &str,
    ) -> Result<FileObject, BatchError> {
        let bytes = std::fs::metadata(temp)?.len();
        self.check_quota(bytes)?;
        let now = now();
        let file = FileObject {
            id: self.new_id(ids::FILE),
            bytes: bytes as i64,
            created_at: now,
            expires_at: Some(now + self.config.file_ttl.as_secs() as i64),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            ..FileObject::default()
        };
        self.dir.keep(temp, &file.id)?;
        self.store.insert_file(&file, owner)?;
        Ok(file.complete())
    }

    /// Whether `more` bytes fit in the data directory's quota.
    pub fn check_quota(&self, more: u64) -> Result<(), BatchError> {
        let held = self.store.bytes_held()?;
        if held + more > self.config.max_disk_bytes {
            return Err(BatchError::Quota(format!(
                "the data directory holds {held} bytes of files and results; {more} more \
                 would pass its quota of {} bytes (batches.max_disk_bytes): delete files first",
                self.config.max_disk_bytes
            )));
        }
        Ok(())
    }

    pub fn file(&self, id: &str, owner: &str) -> Result<FileObject, BatchError> {
        self.store
            .file(id, owner)?
            .map(FileObject::complete)
            .ok_or_else(|| self.missing(id, BatchError::no_file))
    }

    /// Where a file's bytes are.
    pub fn file_path(&self, id: &str, owner: &str) -> Result<PathBuf, BatchError> {
        self.file(id, owner)?;
        Ok(self.dir.file_path(id))
    }

    /// The owner's files, newest first, after `after`; and whether there are more.
    pub fn files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<FileObject>, bool), BatchError> {
        let files = self.store.files(owner, purpose, after, limit + 1)?;
        Ok(page(files, limit, FileObject::complete))
    }

    pub fn delete_file(&self, id: &str, owner: &str) -> Result<(), BatchError> {
        if !self.store.delete_file(id, owner)? {
            return Err(self.missing(id, BatchError::no_file));
        }
        self.dir.remove_file(id);
        Ok(())
    }

    pub fn create_batch(
        &self,
        owner: &str,
        input_file_id: &str,
        endpoint: &str,
        completion_window: &str,
        metadata: Option<Value>,
    ) -> Result<BatchObject, BatchError> {
        if !ENDPOINTS.contains(&endpoint) {
            return Err(invalid(
                "endpoint",
                format!("endpoint `{endpoint}` is not supported: only /v1/embeddings"),
            ));
        }
        if completion_window != "24h" {
            return Err(invalid(
                "completion_window",
                format!("completion_window must be `24h`, got `{completion_window}`"),
            ));
        }
        if let Some(metadata) = &metadata {
            check_metadata(metadata)?;
        }
        let window = self.config.expire_after.as_secs() as i64;
        self.insert_batch(owner, input_file_id, endpoint, metadata, window)
    }

    /// A batch of `/v1/embeddings` requests that never expires: the `batch` subcommand's,
    /// which may be resumed whenever.
    pub fn create_local_batch(&self, input_file_id: &str) -> Result<BatchObject, BatchError> {
        self.insert_batch("", input_file_id, ENDPOINTS[0], None, i64::from(i32::MAX))
    }

    fn insert_batch(
        &self,
        owner: &str,
        input_file_id: &str,
        endpoint: &str,
        metadata: Option<Value>,
        expires_in: i64,
    ) -> Result<BatchObject, BatchError> {
        let input = self.store.file(input_file_id, owner)?.ok_or_else(|| {
            self.missing(input_file_id, |id| {
                invalid("input_file_id", format!("no file with id `{id}`"))
            })
        })?;
        if input.purpose != "batch" {
            return Err(invalid(
                "input_file_id",
                format!(
                    "file `{input_file_id}` has purpose `{}`; a batch reads a file uploaded \
                     with purpose `batch`",
                    input.purpose
                ),
            ));
        }
        let active = self.store.active_batches()?;
        if active >= self.config.max_active_batches {
            return Err(BatchError::Busy(format!(
                "{active} batches are not over yet, as many as this server takes \
                 (batches.max_active_batches): create this one once some are over"
            )));
        }
        let now = now();
        let batch = BatchObject {
            id: self.new_id(ids::BATCH),
            endpoint: endpoint.to_string(),
            input_file_id: input_file_id.to_string(),
            completion_window: "24h".to_string(),
            status: BatchStatus::Validating,
            created_at: now,
            expires_at: now + expires_in,
            metadata,
            planned_output_file_id: self.new_id(ids::FILE),
            planned_error_file_id: self.new_id(ids::FILE),
            ..BatchObject::default()
        };
        self.store.insert_batch(&batch, owner)?;
        self.wake.notify_one();
        Ok(batch.complete(0, 0))
    }

    pub fn batch(&self, id: &str, owner: &str) -> Result<BatchObject, BatchError> {
        let (batch, progress) = self
            .store
            .batch(id, Some(owner))?
            .ok_or_else(|| self.missing(id, BatchError::no_batch))?;
        Ok(batch.complete(progress.output_bytes, progress.error_bytes))
    }

    /// The owner's batches, newest first, after `after`; and whether there are more.
    pub fn batches(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<BatchObject>, bool), BatchError> {
        let batches = self.store.batches(owner, after, limit + 1)?;
        Ok(page(batches, limit, |(batch, progress)| {
            batch.complete(progress.output_bytes, progress.error_bytes)
        }))
    }

    /// Asks a batch to stop: it is `cancelling` until the engine has written what ran, then
    /// `cancelled`.
    pub fn cancel(&self, id: &str, owner: &str) -> Result<BatchObject, BatchError> {
        let batch = self.batch(id, owner)?;
        let running = [BatchStatus::Validating, BatchStatus::InProgress];
        if !self
            .store
            .set_status(id, &running, BatchStatus::Cancelling, now())?
            && !matches!(
                batch.status,
                BatchStatus::Cancelling | BatchStatus::Cancelled
            )
        {
            return Err(invalid(
                "batch_id",
                format!(
                    "batch `{id}` is {} and cannot be cancelled",
                    batch.status.as_str()
                ),
            ));
        }
        self.wake.notify_one();
        self.batch(id, owner)
    }
}

/// A page of `limit` rows out of `limit + 1` read, each completed; and whether there are
/// more.
fn page<T, U>(mut rows: Vec<T>, limit: usize, complete: impl Fn(T) -> U) -> (Vec<U>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows.into_iter().map(complete).collect(), more)
}

/// Runs store and disk work off the async runtime.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BatchError> + Send + 'static,
) -> Result<T, BatchError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BatchError::Storage(format!("a batch task failed: {e}")))?
}

/// OpenAI's bounds on `metadata`: at most 16 string values, keys of up to 64 characters,
/// values of up to 512.
fn check_metadata(metadata: &Value) -> Result<(), BatchError> {
    let Some(pairs) = metadata.as_object() else {
        return Err(invalid("metadata", "metadata must be an object of strings"));
    };
    if pairs.len() > 16 {
        return Err(invalid("metadata", "metadata holds at most 16 keys"));
    }
    for (key, value) in pairs {
        let fits = value.as_str().is_some_and(|v| v.chars().count() <= 512);
        if key.chars().count() > 64 || !fits {
            return Err(invalid(
                "metadata",
                "metadata keys are strings of at most 64 characters, values strings of at most 512",
            ));
        }
    }
    Ok(())
}
