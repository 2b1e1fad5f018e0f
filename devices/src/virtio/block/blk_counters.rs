//! Per-disk counters, updated on the request path and read from anywhere.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one virtio-blk device.
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// IN requests completed OK.
    pub read_ops: AtomicU64,
    /// Their bytes.
    pub read_bytes: AtomicU64,
    /// OUT requests completed OK.
    pub write_ops: AtomicU64,
    /// Their bytes.
    pub write_bytes: AtomicU64,
    /// FLUSH requests completed OK.
    pub flush_ops: AtomicU64,
    /// DISCARD and WRITE_ZEROES requests completed OK.
    pub discard_ops: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_IOERR (bad range, length or shape; host I/O errors).
    pub errors: AtomicU64,
    /// Requests answered VIRTIO_BLK_S_UNSUPP (unknown type, a feature not negotiated).
    pub unsupported: AtomicU64,
    /// Chains dropped without a status: no writable status byte, broken or outside memory.
    pub malformed_chains: AtomicU64,
    /// Times the device gave up on the driver's ring (DEVICE_NEEDS_RESET).
    pub needs_reset: AtomicU64,
}

/// A plain copy of [`BlockCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct BlockCountersSnapshot {
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub flush_ops: u64,
    pub discard_ops: u64,
    pub errors: u64,
    pub unsupported: u64,
    pub malformed_chains: u64,
    pub needs_reset: u64,
}

impl BlockCounters {
    /// Read every counter.
    pub fn snapshot(&self) -> BlockCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockCountersSnapshot {
            read_ops: get(&self.read_ops),
            read_bytes: get(&self.read_bytes),
            write_ops: get(&self.write_ops),
            write_bytes: get(&self.write_bytes),
            flush_ops: get(&self.flush_ops),
            discard_ops: get(&self.discard_ops),
            errors: get(&self.errors),
            unsupported: get(&self.unsupported),
            malformed_chains: get(&self.malformed_chains),
            needs_reset: get(&self.needs_reset),
        }
    }
}
