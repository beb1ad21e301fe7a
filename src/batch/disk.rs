//! The data directory's layout, and writes that survive a crash: a file is written under
//! `tmp/`, synced, renamed into `files/` and its directory synced before anything refers to
//! it. `work/` holds the results of running batches, appended and synced a chunk at a time.
//!
//! ```text
//! DATA_DIR/jobs.sqlite3        the store
//! DATA_DIR/files/<file id>     uploads and finished results
//! DATA_DIR/work/<batch id>.*   results of a running batch
//! DATA_DIR/tmp/                uploads being received
//! ```

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn create(root: &Path) -> io::Result<Self> {
        for sub in ["files", "work", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", root.join(sub).display()),
                )
            })?;
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn store_path(&self) -> PathBuf {
        self.root.join("jobs.sqlite3")
    }

    pub fn temp_path(&self) -> PathBuf {
        self.root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn file_path(&self, id: &str) -> PathBuf {
        self.root.join("files").join(id)
    }

    /// Where a running batch writes its results (`output` or `errors`).
    pub fn work_path(&self, batch_id: &str, kind: &str) -> PathBuf {
        self.root
            .join("work")
            .join(format!("{batch_id}.{kind}.jsonl"))
    }

    /// Makes the synced file at `temp` the file `id`.
    pub fn keep(&self, temp: &Path, id: &str) -> io::Result<()> {
        File::open(temp)?.sync_all()?;
        self.settle(temp, &self.file_path(id))
    }

    /// Renames `from` to `to` (both synced already) and syncs `to`'s directory, so the name
    /// outlives a crash.
    pub fn settle(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)?;
        if let Some(dir) = to.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    pub fn remove_file(&self, id: &str) {
        if let Err(e) = std::fs::remove_file(self.file_path(id))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = id, "cannot remove a deleted file's bytes: {e}");
        }
    }

    /// Removes uploads a crash interrupted, and files the store does not know.
    pub fn remove_orphans(&self, known: impl Fn(&str) -> bool) -> io::Result<()> {
        for entry in std::fs::read_dir(self.root.join("tmp"))? {
            std::fs::remove_file(entry?.path())?;
        }
        for entry in std::fs::read_dir(self.root.join("files"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !known(&name) {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}
