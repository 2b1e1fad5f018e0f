//! Counters of one sliver's audit log, for metrics and for the tests.

use std::sync::atomic::AtomicU64;

use serde::Serialize;

/// Counters of one sliver's log.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records queued.
    pub appended: AtomicU64,
    /// Records written and synced.
    pub durable: AtomicU64,
    /// Records refused by `append` (queue full, or not encodable).
    pub dropped: AtomicU64,
    /// Records queued but discarded because the disk refused writes for so long that the
    /// in-memory backlog reached its cap.
    pub discarded: AtomicU64,
    /// Group commits (one write and one `fdatasync` each).
    pub commits: AtomicU64,
    /// Failed writes, syncs, creates or retention passes.
    pub io_errors: AtomicU64,
    /// Segments deleted by retention.
    pub segments_expired: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    /// Records queued.
    pub appended: u64,
    /// Records written and synced.
    pub durable: u64,
    /// Records refused by `append`.
    pub dropped: u64,
    /// Records queued, then discarded while the disk refused writes.
    pub discarded: u64,
    /// Group commits.
    pub commits: u64,
    /// I/O errors.
    pub io_errors: u64,
    /// Segments deleted by retention.
    pub segments_expired: u64,
    /// Every record with a sequence number up to this one that was queued is durable.
    pub durable_seq: u64,
}
