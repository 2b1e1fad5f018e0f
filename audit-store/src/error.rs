//! Errors of the audit log, its queries and exports; each names the path or field at fault.

use std::io;
use std::path::PathBuf;

/// What went wrong in the audit store.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process writes this sliver's log (or capture ring).
    #[error("{dir}: locked by another writer")]
    Locked {
        /// The sliver's log directory or capture ring.
        dir: PathBuf,
    },
    /// A query or export parameter is invalid.
    #[error("{field}: {reason}")]
    Invalid {
        /// The flag or query parameter, e.g. `--at`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file exists but is not in the expected format.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl AuditError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        AuditError::Io {
            path: path.into(),
            source,
        }
    }

    /// A bad value for `field`.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        AuditError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The field at fault, if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            AuditError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Result of the audit store.
pub type Result<T> = std::result::Result<T, AuditError>;
