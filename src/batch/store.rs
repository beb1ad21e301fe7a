//! The job state, in SQLite: files and batches, each row owned by the API key that made it.
//! Every change is one transaction, committed (WAL, `synchronous = FULL`) before the client
//! hears of it, so a crash at any instant loses nothing acknowledged.

use std::path::Path;

use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::objects::{BatchObject, BatchStatus, FileObject, RequestCounts};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    input_offset INTEGER NOT NULL DEFAULT 0,
    output_bytes INTEGER NOT NULL DEFAULT 0,
    error_bytes INTEGER NOT NULL DEFAULT 0,
    output_file_id TEXT NOT NULL,
    error_file_id TEXT NOT NULL,
    errors TEXT
);
";

/// Where a running batch stands: how far into its input, and how much of its results are
/// written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub input_offset: u64,
    pub output_bytes: u64,
    pub error_bytes: u64,
    pub completed: u64,
    pub failed: u64,
}

pub struct Store(Mutex<Connection>);

type Result<T> = rusqlite::Result<T>;

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.execute_batch(SCHEMA)?;
        Ok(Self(Mutex::new(connection)))
    }

    pub fn insert_file(&self, file: &FileObject, owner: &str) -> Result<()> {
        insert_file(&self.0.lock(), file, owner)
    }

    pub fn file(&self, id: &str, owner: &str) -> Result<Option<FileObject>> {
        self.0
            .lock()
            .query_row(
                &format!(
                    "SELECT {FILE_COLUMNS} FROM files WHERE id = ?1 AND owner = ?2 AND {UNEXPIRED}"
                ),
                params![id, owner],
                file_row,
            )
            .optional()
    }

    /// The owner's files, newest first (ids sort by creation), after the id `after`, which
    /// may be another replica's.
    pub fn files(
        &self,
        owner: &str,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileObject>> {
        let connection = self.0.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE owner = ?1 AND {UNEXPIRED}
               AND (?2 IS NULL OR purpose = ?2)
               AND (?3 IS NULL OR id < ?3)
             ORDER BY id DESC LIMIT ?4"
        ))?;
        let rows = statement.query_map(params![owner, purpose, after, limit as i64], file_row)?;
        rows.collect()
    }

    pub fn delete_file(&self, id: &str, owner: &str) -> Result<bool> {
        let deleted = self.0.lock().execute(
            "DELETE FROM files WHERE id = ?1 AND owner = ?2",
            params![id, owner],
        )?;
        Ok(deleted > 0)
    }

    /// Files past their expiry, but for the inputs of batches not over yet (which read
    /// them to the end).
    pub fn expired_files(&self) -> Result<Vec<String>> {
        let connection = self.0.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT id FROM files WHERE NOT {UNEXPIRED}
               AND id NOT IN (SELECT input_file_id FROM batches WHERE status IN {ACTIVE})"
        ))?;
        let rows = statement.query_map([], |row| row.get(0))?;
        rows.collect()
    }

    pub fn delete_expired_file(&self, id: &str) -> Result<()> {
        self.0
            .lock()
            .execute("DELETE FROM files WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Whether a file of that id is known (to anyone), or is a batch's result.
    pub fn known_file(&self, id: &str) -> Result<bool> {
        self.0
            .lock()
            .query_row(
                "SELECT 1 FROM files WHERE id = ?1
                 UNION ALL SELECT 1 FROM batches WHERE output_file_id = ?1 OR error_file_id = ?1",
                [id],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
    }

    /// Bytes held by files and by the results of batches still running.
    pub fn bytes_held(&self) -> Result<u64> {
        self.0.lock().query_row(
            &format!(
                "SELECT (SELECT COALESCE(SUM(bytes), 0) FROM files)
                      + (SELECT COALESCE(SUM(output_bytes + error_bytes), 0) FROM batches
                         WHERE status IN {ACTIVE})"
            ),
            [],
            |row| row.get::<_, i64>(0).map(|b| b as u64),
        )
    }

    pub fn insert_batch(&self, batch: &BatchObject, owner: &str) -> Result<()> {
        self.0.lock().execute(
            "INSERT INTO batches (id, owner, input_file_id, endpoint, completion_window, metadata,
                                  status, created_at, expires_at, output_file_id, error_file_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                batch.id,
                owner,
                batch.input_file_id,
                batch.endpoint,
                batch.completion_window,
                batch.metadata.as_ref().map(|m| m.to_string()),
                batch.status.as_str(),
                batch.created_at,
                batch.expires_at,
                batch.planned_output_file_id,
                batch.planned_error_file_id,
            ],
        )?;
        Ok(())
    }

    pub fn batch(&self, id: &str, owner: Option<&str>) -> Result<Option<(BatchObject, Progress)>> {
        self.0
            .lock()
            .query_row(
                &format!(
                    "SELECT {BATCH_COLUMNS} FROM batches WHERE id = ?1 AND (?2 IS NULL OR owner = ?2)"
                ),
                params![id, owner],
                batch_row,
            )
            .optional()
    }

    /// The owner's batches, newest first (ids sort by creation), after the id `after`, which
    /// may be another replica's.
    pub fn batches(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(BatchObject, Progress)>> {
        let connection = self.0.lock();
        let mut statement = connection.prepare(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE owner = ?1
               AND (?2 IS NULL OR id < ?2)
             ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = statement.query_map(params![owner, after, limit as i64], batch_row)?;
        rows.collect()
    }

    /// The oldest batch with work left for the engine.
    pub fn next_active(&self) -> Result<Option<(BatchObject, Progress)>> {
        self.0
            .lock()
            .query_row(
                &format!(
                    "SELECT {BATCH_COLUMNS} FROM batches
                     WHERE status IN {ACTIVE} ORDER BY seq LIMIT 1"
                ),
                [],
                batch_row,
            )
            .optional()
    }

    /// Batches not yet over.
    pub fn active_batches(&self) -> Result<usize> {
        self.0.lock().query_row(
            &format!("SELECT COUNT(*) FROM batches WHERE status IN {ACTIVE}"),
            [],
            |row| row.get::<_, i64>(0).map(|n| n as usize),
        )
    }

    /// Lines that running batches have left.
    pub fn lines_left(&self) -> Result<u64> {
        self.0.lock().query_row(
            "SELECT COALESCE(SUM(total - completed - failed), 0) FROM batches
             WHERE status IN ('validating', 'in_progress')",
            [],
            |row| row.get::<_, i64>(0).map(|n| n.max(0) as u64),
        )
    }

    /// How many batches are in each status.
    pub fn status_counts(&self) -> Result<Vec<(String, i64)>> {
        let connection = self.0.lock();
        let mut statement =
            connection.prepare("SELECT status, COUNT(*) FROM batches GROUP BY status")?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
        rows.collect()
    }

    /// Moves a batch to `status`, stamping its time, if it is in one of `from`. Whether it
    /// moved.
    pub fn set_status(
        &self,
        id: &str,
        from: &[BatchStatus],
        status: BatchStatus,
        now: i64,
    ) -> Result<bool> {
        let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        let placeholders = vec!["?"; from.len()].join(", ");
        let sql = format!(
            "UPDATE batches SET status = ?, {} = ? WHERE id = ? AND status IN ({placeholders})",
            status.stamp_column()
        );
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&status, &now, &id];
        values.extend(from.iter().map(|s| s as &dyn rusqlite::ToSql));
        let moved = self.0.lock().execute(&sql, values.as_slice())?;
        Ok(moved > 0)
    }

    pub fn set_total(&self, id: &str, total: u64) -> Result<()> {
        self.0.lock().execute(
            "UPDATE batches SET total = ?1 WHERE id = ?2",
            params![total as i64, id],
        )?;
        Ok(())
    }

    pub fn set_errors(&self, id: &str, errors: &serde_json::Value) -> Result<()> {
        self.0.lock().execute(
            "UPDATE batches SET errors = ?1 WHERE id = ?2",
            params![errors.to_string(), id],
        )?;
        Ok(())
    }

    /// Records how far a batch got, after its results up to there are on disk.
    pub fn save_progress(&self, id: &str, progress: &Progress) -> Result<()> {
        self.0.lock().execute(
            "UPDATE batches SET input_offset = ?1, output_bytes = ?2, error_bytes = ?3,
                                completed = ?4, failed = ?5
             WHERE id = ?6",
            params![
                progress.input_offset as i64,
                progress.output_bytes as i64,
                progress.error_bytes as i64,
                progress.completed as i64,
                progress.failed as i64,
                id
            ],
        )?;
        Ok(())
    }

    /// Ends a batch: its result files become files of its owner, in one transaction with
    /// its last status.
    pub fn finish(
        &self,
        id: &str,
        owner: &str,
        results: &[FileObject],
        status: BatchStatus,
        now: i64,
    ) -> Result<()> {
        let mut connection = self.0.lock();
        let transaction = connection.transaction()?;
        for file in results {
            insert_file(&transaction, file, owner)?;
        }
        transaction.execute(
            &format!(
                "UPDATE batches SET status = ?1, {} = ?2 WHERE id = ?3",
                status.stamp_column()
            ),
            params![status, now, id],
        )?;
        transaction.commit()
    }
}

/// Adds a file's row (again, after a crash, changes nothing).
fn insert_file(connection: &Connection, file: &FileObject, owner: &str) -> Result<()> {
    connection.execute(
        "INSERT OR IGNORE INTO files (id, owner, filename, purpose, bytes, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            file.id,
            owner,
            file.filename,
            file.purpose,
            file.bytes,
            file.created_at,
            file.expires_at
        ],
    )?;
    Ok(())
}

/// A file the API still shows: one past its expiry is gone, even before the engine's sweep
/// removes its bytes.
const UNEXPIRED: &str = "(expires_at IS NULL OR expires_at > unixepoch())";

/// The statuses of batches not over yet.
const ACTIVE: &str = "('validating', 'in_progress', 'finalizing', 'cancelling')";

const FILE_COLUMNS: &str = "id, filename, purpose, bytes, created_at, expires_at";

fn file_row(row: &Row) -> Result<FileObject> {
    Ok(FileObject {
        id: row.get(0)?,
        filename: row.get(1)?,
        purpose: row.get(2)?,
        bytes: row.get(3)?,
        created_at: row.get(4)?,
        expires_at: row.get(5)?,
        ..FileObject::default()
    })
}

const BATCH_COLUMNS: &str = "id, input_file_id, endpoint, completion_window, metadata, status,
    created_at, expires_at, in_progress_at, finalizing_at, completed_at, failed_at, expired_at,
    cancelling_at, cancelled_at, total, completed, failed, input_offset, output_bytes,
    error_bytes, output_file_id, error_file_id, errors, owner";

fn batch_row(row: &Row) -> Result<(BatchObject, Progress)> {
    let metadata: Option<String> = row.get(4)?;
    let errors: Option<String> = row.get(23)?;
    let progress = Progress {
        input_offset: row.get::<_, i64>(18)? as u64,
        output_bytes: row.get::<_, i64>(19)? as u64,
        error_bytes: row.get::<_, i64>(20)? as u64,
        completed: row.get::<_, i64>(16)? as u64,
        failed: row.get::<_, i64>(17)? as u64,
    };
    let batch = BatchObject {
        id: row.get(0)?,
        input_file_id: row.get(1)?,
        endpoint: row.get(2)?,
        completion_window: row.get(3)?,
        metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
        status: row.get(5)?,
        created_at: row.get(6)?,
        expires_at: row.get(7)?,
        in_progress_at: row.get(8)?,
        finalizing_at: row.get(9)?,
        completed_at: row.get(10)?,
        failed_at: row.get(11)?,
        expired_at: row.get(12)?,
        cancelling_at: row.get(13)?,
        cancelled_at: row.get(14)?,
        request_counts: RequestCounts {
            total: row.get::<_, i64>(15)? as u64,
            completed: progress.completed,
            failed: progress.failed,
        },
        planned_output_file_id: row.get(21)?,
        planned_error_file_id: row.get(22)?,
        errors: errors.and_then(|e| serde_json::from_str(&e).ok()),
        owner: row.get(24)?,
        ..BatchObject::default()
    };
    Ok((batch, progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_file_is_gone_at_once_but_swept_only_once_no_batch_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.sqlite")).unwrap();
        let file = FileObject {
            id: "file-input".into(),
            purpose: "batch".into(),
            expires_at: Some(1),
            ..FileObject::default()
        };
        store.insert_file(&file, "").unwrap();
        assert!(store.file("file-input", "").unwrap().is_none());
        assert!(store.files("", None, None, 10).unwrap().is_empty());

        let batch = BatchObject {
            id: "batch_reading".into(),
            input_file_id: "file-input".into(),
            status: BatchStatus::InProgress,
            ..BatchObject::default()
        };
        store.insert_batch(&batch, "").unwrap();
        assert!(store.expired_files().unwrap().is_empty());
        let over = store
            .set_status(
                "batch_reading",
                &[BatchStatus::InProgress],
                BatchStatus::Completed,
                2,
            )
            .unwrap();
        assert!(over);
        assert_eq!(store.expired_files().unwrap(), ["file-input"]);
    }
}
