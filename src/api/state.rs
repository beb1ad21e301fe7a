//! What every handler shares: the model cache, the limits and the server's settings.

use std::sync::Arc;

use parking_lot::RwLock;

use super::body::BodyLimits;
use crate::cache::ModelCache;

pub struct AppState {
    pub cache: Arc<ModelCache>,
    pub body: BodyLimits,
    pub limits: RequestLimits,
    pub ready: Arc<Readiness>,
    pub api_keys: Vec<String>,
    pub protect_metrics: bool,
    pub cors_origins: Vec<String>,
    pub compress_responses: bool,
    pub request_timeout: std::time::Duration,
    /// The model of requests that name none: `server.default_model`, else the only
    /// configured model.
    pub default_model: Option<String>,
    /// Unix time the server started: the `created` of every model object.
    pub started_at: u64,
    /// The Files and Batch API, when `server.data_dir` is set.
    pub batches: Option<Arc<crate::batch::Batches>>,
    /// `server.replica_name`, said in every response's `X-Embedserve-Replica`.
    pub replica_name: Option<String>,
}

/// Per-request bounds, like OpenAI's.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_inputs_per_request: usize,
    pub max_tokens_per_request: usize,
}

/// Whether the server can take traffic, and if not, why.
#[derive(Debug)]
pub struct Readiness(RwLock<Option<String>>);

impl Readiness {
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self(RwLock::new(Some(reason.into())))
    }

    pub fn set_ready(&self) {
        *self.0.write() = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.0.write() = Some(reason.into());
    }

    pub fn reason(&self) -> Option<String> {
        self.0.read().clone()
    }
}
