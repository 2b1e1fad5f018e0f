//! The audit store: a durable, append-only, per-sliver log of flow records (group commit,
//! CRC per record, torn-tail recovery, retention), a time- and address-indexed query, the
//! header capture ring, and IPFIX and pcapng export. See `docs/audit.md`.

pub mod audit_cmd;
pub mod bloom;
pub mod capture;
pub mod codec;
mod committer;
pub mod error;
pub mod export;
pub mod index;
pub mod ipfix;
mod lock;
pub mod log_counters;
mod mmap;
pub mod nat_log;
pub mod params;
pub mod pcapng;
pub mod query;
pub mod reader;
pub mod record;
pub mod recovery;
pub mod retention;
pub mod segment;
pub mod span;
#[cfg(any(test, feature = "test-utils"))]
pub mod synth;
pub mod writer;

pub use error::{AuditError, Result};
pub use record::FlowRecord;
pub use segment::sliver_dir;
pub use writer::{AuditConfig, AuditLog};
