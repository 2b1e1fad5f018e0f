//! Errors a client gets back: an HTTP status, a message, and the field that was wrong.

use serde::Serialize;

/// An error for a control-socket client, serialised as `{"error": "...", "field": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    /// HTTP status code.
    #[serde(skip)]
    pub status: u16,
    /// What was wrong, for a person.
    pub error: String,
    /// The offending field (dotted path), when one field is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// 400 about `field`.
    pub fn invalid(field: &str, error: impl Into<String>) -> Self {
        Self {
            status: 400,
            error: error.into(),
            field: Some(field.to_string()),
        }
    }

    /// A status with no particular field.
    pub fn status(status: u16, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            field: None,
        }
    }
}
