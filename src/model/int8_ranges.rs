//! A model's int8 ranges: per dimension, the span its byte codes count in 256 steps. Fixed
//! per model (and per `dimensions`), so that a text's codes never depend on its batch-mates,
//! unlike sentence-transformers' default of the batch's own ranges. They come from
//! `int8_ranges.json` in the model's folder when it has one (sentence-transformers' `ranges`
//! as `{"min": [...], "max": [...]}`, at the model's full width), else from the model's own
//! vectors of a built-in calibration set, computed on the first request that needs them.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

use super::{EmbedError, EmbedOptions, Input, Model, l2_normalize};
use crate::quantize::Ranges;

/// The file a model's folder may give its ranges in.
pub const RANGES_FILE: &str = "int8_ranges.json";

/// 1,000 sentences of 8 to 60 words from Wikipedia articles (`scripts/make-int8-calibration`).
const CALIBRATION_SET: &str = include_str!("int8-calibration.txt");

/// Calibration runs as requests of this many texts, so that it never fills the model's queue.
const CALIBRATION_CHUNK: usize = 32;

/// Where a model's ranges came from, as `/v1/models` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RangesSource {
    /// The folder's `int8_ranges.json`.
    File,
    /// The built-in calibration set, through the model.
    CalibrationSet,
}

/// The ranges a model has computed, by width.
#[derive(Default)]
pub(super) struct Int8Ranges {
    /// The folder's ranges, read once.
    file: OnceCell<Option<Arc<Ranges>>>,
    /// The model's full-width vectors of the calibration set, computed once.
    calibration: OnceCell<Arc<Vec<Vec<f32>>>>,
    /// Ranges by the requests' `dimensions` (which also normalize again): at most one per
    /// width the model has, and one without.
    by_dimensions: Mutex<HashMap<Option<usize>, Arc<Ranges>>>,
}

impl Model {
    /// The ranges for this model's vectors shortened to `dimensions` (its full width when
    /// `None`), and where they came from.
    pub async fn int8_ranges(
        self: &Arc<Self>,
        dimensions: Option<usize>,
    ) -> Result<(Arc<Ranges>, RangesSource), EmbedError> {
        self.int8.file.get_or_init(|| self.read_ranges_file()).await;
        if let Some(known) = self.known_int8_ranges(dimensions) {
            return Ok(known);
        }
        // Calibrating runs as a task of its own, so that it finishes even when the request
        // that started it goes away: a client that asks for int8 and hangs up at once must
        // not make every next request start the thousand texts over.
        let model = self.clone();
        let calibrating = tokio::spawn(async move {
            let calibration = &model.int8.calibration;
            let vectors = calibration.get_or_try_init(|| model.clone().embed_calibration_set());
            vectors.await.cloned()
        });
        let vectors = calibrating
            .await
            .map_err(|e| EmbedError::Task(format!("calibrating the int8 ranges failed: {e}")))??;
        let width = dimensions.unwrap_or(self.dimension);
        let shortened = vectors.iter().map(|vector| {
            let mut vector = vector[..width.min(vector.len())].to_vec();
            if dimensions.is_some() {
                l2_normalize(&mut vector);
            }
            vector
        });
        let ranges = Ranges::of(shortened)
            .map(Arc::new)
            .ok_or_else(|| EmbedError::Task("the int8 calibration set is empty".into()))?;
        self.int8
            .by_dimensions
            .lock()
            .insert(dimensions, ranges.clone());
        Ok((ranges, RangesSource::CalibrationSet))
    }

    /// The full-width ranges, if a request has needed them yet: never computes them.
    pub fn computed_int8_ranges(&self) -> Option<(Arc<Ranges>, RangesSource)> {
        self.known_int8_ranges(None)
    }

    /// The ranges for `dimensions` that are known already: the folder's (at full width,
    /// once read), else those computed for an earlier request.
    fn known_int8_ranges(&self, dimensions: Option<usize>) -> Option<(Arc<Ranges>, RangesSource)> {
        let file = self.int8.file.get().cloned().flatten();
        match file.filter(|ranges| dimensions.is_none() && ranges.width() == self.dimension) {
            Some(ranges) => Some((ranges, RangesSource::File)),
            None => (self.int8.by_dimensions.lock().get(&dimensions).cloned())
                .map(|ranges| (ranges, RangesSource::CalibrationSet)),
        }
    }

    /// The folder's `int8_ranges.json`, if it has a usable one; a broken file is logged and
    /// passed over for the calibration set.
    async fn read_ranges_file(&self) -> Option<Arc<Ranges>> {
        let path = self.dir.join(RANGES_FILE);
        let text = tokio::fs::read_to_string(&path).await.ok()?;
        match serde_json::from_str::<Ranges>(&text) {
            Ok(ranges) if ranges.min.len() == ranges.max.len() && ranges.width() > 0 => {
                Some(Arc::new(ranges))
            }
            Ok(_) => {
                tracing::warn!(path = %path.display(), "int8 ranges of unequal widths; calibrating instead");
                None
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "unreadable int8 ranges; calibrating instead");
                None
            }
        }
    }

    async fn embed_calibration_set(self: Arc<Self>) -> Result<Arc<Vec<Vec<f32>>>, EmbedError> {
        let texts: Vec<&str> = CALIBRATION_SET.lines().collect();
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(CALIBRATION_CHUNK) {
            let inputs = chunk.iter().map(|t| Input::Text(t.to_string())).collect();
            let embedded = self.clone().embed(inputs, EmbedOptions::default()).await?;
            vectors.extend(embedded.vectors);
        }
        tracing::info!(model = %self.name, texts = texts.len(), "computed the int8 ranges");
        Ok(Arc::new(vectors))
    }
}
