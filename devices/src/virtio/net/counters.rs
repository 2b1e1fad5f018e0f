//! Per-device packet counters, updated on the packet path and read from anywhere. Each
//! direction's queue updates its own part ([`TxCounters`], [`RxCounters`]); "tx" is what the
//! guest sent.
//!
//! Every update goes through the device (`&mut` to it or to a queue it owns), so a counter
//! has one writer at a time: the device's `inc` and `add` load and store instead of a locked
//! read-modify-write. Code outside the device only reads them (`NetCounters::snapshot`). A
//! `lock add` on every frame, right after the frame's system call, was ~3 % of a 64-byte TX
//! frame's time (`perf record` of `net_path 3000 tx-device`: the
//! samples piled up behind the two per-frame `lock add`s; issue 16, eighth part).

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the transmit queue.
#[derive(Debug, Default)]
pub struct TxCounters {
    /// Packets sent by the guest and written to the backend (a GSO frame counts as its
    /// wire segments).
    pub packets: AtomicU64,
    /// Their bytes on the wire (without the virtio header; a GSO frame's segments each with
    /// their headers).
    pub bytes: AtomicU64,
    /// Guest frames dropped (bad chain or frame, spoofed, backend error).
    pub dropped: AtomicU64,
    /// Descriptor chains that were malformed (loops, bad addresses, wrong direction).
    pub malformed_chains: AtomicU64,
    /// Times TX had to wait because the backend would block.
    pub backend_full: AtomicU64,
    /// Times TX stopped to wait for the shaper.
    pub throttled: AtomicU64,
    /// Frames whose virtio header set fields of features the driver did not negotiate (the
    /// fields were cleared before the frame went on).
    pub header_fields_cleared: AtomicU64,
    /// Frames the backend refused (a write error other than "would block"); also in
    /// `dropped`.
    pub backend_errors: AtomicU64,
    /// Checksum requests the device carried out itself (not for the frame's own TCP/UDP
    /// checksum field, see `checksum.rs`).
    pub checksums_done: AtomicU64,
}

/// Counters of the receive queue.
#[derive(Debug, Default)]
pub struct RxCounters {
    /// Frames delivered to the guest.
    pub packets: AtomicU64,
    /// Their bytes (without the virtio header).
    pub bytes: AtomicU64,
    /// Host frames dropped (runt, longer than the guest's buffer, malformed).
    pub dropped: AtomicU64,
    /// Descriptor chains that were malformed (loops, bad addresses, wrong direction).
    pub malformed_chains: AtomicU64,
    /// Times a frame had to wait because the guest had posted no RX buffer.
    pub no_buffer: AtomicU64,
    /// Times RX stopped to wait for the shaper.
    pub throttled: AtomicU64,
    /// Frames whose virtio header from the host set fields of features the driver did not
    /// negotiate (cleared before the guest saw them).
    pub header_fields_cleared: AtomicU64,
}

/// Counters of one virtio-net device.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// The transmit queue's.
    pub tx: TxCounters,
    /// The receive queue's.
    pub rx: RxCounters,
    /// Times the device gave up on the driver's rings (DEVICE_NEEDS_RESET).
    pub needs_reset: AtomicU64,
}

/// A plain copy of [`NetCounters`], both queues' malformed chains summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct NetCountersSnapshot {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub malformed_chains: u64,
    pub rx_no_buffer: u64,
    pub tx_backend_full: u64,
    pub needs_reset: u64,
    pub tx_throttled: u64,
    pub rx_throttled: u64,
    pub tx_header_fields_cleared: u64,
    pub rx_header_fields_cleared: u64,
    pub tx_backend_errors: u64,
    pub tx_checksums_done: u64,
}

/// Add one (the counter's only writer: see the module's docs).
#[inline]
pub(crate) fn inc(c: &AtomicU64) {
    add(c, 1);
}

/// Add `n` (the counter's only writer: see the module's docs). Wraps at 2^64.
#[inline]
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl NetCounters {
    /// Read every counter.
    pub fn snapshot(&self) -> NetCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (tx, rx) = (&self.tx, &self.rx);
        NetCountersSnapshot {
            tx_packets: get(&tx.packets),
            tx_bytes: get(&tx.bytes),
            tx_dropped: get(&tx.dropped),
            rx_packets: get(&rx.packets),
            rx_bytes: get(&rx.bytes),
            rx_dropped: get(&rx.dropped),
            malformed_chains: get(&tx.malformed_chains) + get(&rx.malformed_chains),
            rx_no_buffer: get(&rx.no_buffer),
            tx_backend_full: get(&tx.backend_full),
            needs_reset: get(&self.needs_reset),
            tx_throttled: get(&tx.throttled),
            rx_throttled: get(&rx.throttled),
            tx_header_fields_cleared: get(&tx.header_fields_cleared),
            rx_header_fields_cleared: get(&rx.header_fields_cleared),
            tx_backend_errors: get(&tx.backend_errors),
            tx_checksums_done: get(&tx.checksums_done),
        }
    }
}
