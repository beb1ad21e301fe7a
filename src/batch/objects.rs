//! OpenAI's `file` and `batch` objects, as its API documents and the `openai` client reads
//! them.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    pub bytes: i64,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub filename: String,
    /// `batch` for uploads, `batch_output` for results.
    pub purpose: String,
    /// Always `processed`: a file is usable once its upload is acknowledged.
    pub status: &'static str,
}

impl FileObject {
    /// Fills in the fields every file object carries.
    pub fn complete(mut self) -> Self {
        self.object = "file";
        self.status = "processed";
        self
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    #[default]
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
}

const STATUSES: [BatchStatus; 8] = [
    BatchStatus::Validating,
    BatchStatus::InProgress,
    BatchStatus::Finalizing,
    BatchStatus::Completed,
    BatchStatus::Failed,
    BatchStatus::Expired,
    BatchStatus::Cancelling,
    BatchStatus::Cancelled,
];

impl BatchStatus {
    pub fn all() -> [Self; 8] {
        STATUSES
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }

    /// The column that keeps when a batch entered this status.
    pub fn stamp_column(self) -> &'static str {
        match self {
            Self::Validating => "created_at",
            Self::InProgress => "in_progress_at",
            Self::Finalizing => "finalizing_at",
            Self::Completed => "completed_at",
            Self::Failed => "failed_at",
            Self::Expired => "expired_at",
            Self::Cancelling => "cancelling_at",
            Self::Cancelled => "cancelled_at",
        }
    }

    /// Whether the batch is over: its results are files, and it never changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Expired | Self::Cancelled
        )
    }
}

impl ToSql for BatchStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for BatchStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        STATUSES
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| FromSqlError::Other(format!("unknown batch status `{text}`").into()))
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct BatchObject {
    pub id: String,
    /// Always `batch`.
    pub object: &'static str,
    pub endpoint: String,
    /// Why the batch failed validation: `{"object": "list", "data": [{"code", "message",
    /// "param", "line"}]}`.
    #[schema(value_type = Option<Object>)]
    pub errors: Option<Value>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    /// The results once the batch is over.
    pub output_file_id: Option<String>,
    /// The failed lines once the batch is over, if any failed.
    pub error_file_id: Option<String>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: i64,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    #[serde(skip)]
    pub planned_output_file_id: String,
    #[serde(skip)]
    pub planned_error_file_id: String,
    #[serde(skip)]
    pub owner: String,
}

impl BatchObject {
    /// Fills in what is derived: the object name, and the result files once they exist.
    pub fn complete(mut self, output_bytes: u64, error_bytes: u64) -> Self {
        self.object = "batch";
        if self.status.is_final() {
            let completed = self.status == BatchStatus::Completed;
            self.output_file_id =
                (completed || output_bytes > 0).then(|| self.planned_output_file_id.clone());
            self.error_file_id = (error_bytes > 0).then(|| self.planned_error_file_id.clone());
        }
        self
    }
}
