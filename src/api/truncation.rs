//! TEI's `truncation_direction`, accepted by every route that takes TEI's fields.

use serde::Deserialize;

use super::error::ApiError;

/// TEI's `truncation_direction`: only `Right`, sentence-transformers' own, is supported.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
pub enum TruncationDirection {
    #[serde(alias = "right")]
    Right,
    #[serde(alias = "left")]
    Left,
}

impl TruncationDirection {
    pub fn require_right(self) -> Result<(), ApiError> {
        match self {
            Self::Right => Ok(()),
            Self::Left => Err(ApiError::bad_request(
                "truncation_direction",
                "truncation_direction `Left` is not supported: inputs are truncated at the right, \
                 as sentence-transformers truncates them",
            )),
        }
    }
}
