//! Why an operation on the node's slivers failed, in the daemon's own terms. Nothing here
//! knows about HTTP: the API layer (`api.rs`) maps each kind to a status code.

use audit_store::AuditError;

use crate::host_net::HostNetError;
use crate::state::StateError;

/// An operation on a sliver (define, change, start, stop, delete, query) that failed.
#[derive(Debug, thiserror::Error)]
pub enum SliverError {
    /// A field of the request is not acceptable.
    #[error("{reason}")]
    Invalid {
        /// The offending field (dotted path, `body` for the document as a whole).
        field: String,
        /// What is wrong with it, for a person.
        reason: String,
    },
    /// The request body is longer than the daemon reads.
    #[error("request body of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Its length, bytes.
        len: usize,
        /// The limit, bytes.
        max: usize,
    },
    /// No sliver has this name.
    #[error("no sliver named {0:?}")]
    NotFound(String),
    /// No image has this name.
    #[error("no image named {0:?} (see GET /images)")]
    ImageNotFound(String),
    /// The request conflicts with the sliver's definition or its state.
    #[error("{reason}")]
    Conflict {
        /// The field the conflict is about, if one is.
        field: Option<String>,
        /// What conflicts, for a person.
        reason: String,
    },
    /// A node-wide resource is used up (the reason names it).
    #[error("{0}")]
    Exhausted(String),
    /// The state directory refused a read or write.
    #[error("state directory: {0}")]
    Storage(#[from] StateError),
    /// The sliver's host side (its TAP and address) could not be set up.
    #[error("setting up the host side: {0}")]
    HostNet(#[from] HostNetError),
    /// The VMM process could not be started (`what` says which step).
    #[error("{what}: {source}")]
    Vmm {
        /// Which step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// An audit query that failed (a bad parameter names its field).
    #[error("{}", audit_message(.0))]
    Audit(#[from] AuditError),
    /// The daemon's own bookkeeping went wrong (a bug, described).
    #[error("internal error: {0}")]
    Internal(String),
}

/// A bad query parameter as the audit store words it (it names the field); any other failure
/// of the store says it is the audit log's.
fn audit_message(e: &AuditError) -> String {
    match e.field() {
        Some(_) => e.to_string(),
        None => format!("audit log: {e}"),
    }
}

impl SliverError {
    /// `field` is not acceptable because of `reason`.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// The request conflicts with the sliver's state or definition; `field` when one field is
    /// to blame.
    pub fn conflict(field: Option<&str>, reason: impl Into<String>) -> Self {
        Self::Conflict {
            field: field.map(str::to_string),
            reason: reason.into(),
        }
    }

    /// The field a client should correct, when one is to blame.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            Self::Conflict { field, .. } => field.as_deref(),
            Self::HostNet(_) => Some("net"),
            Self::Audit(e) => e.field(),
            _ => None,
        }
    }
}
