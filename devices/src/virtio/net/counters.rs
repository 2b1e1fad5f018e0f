//! Per-device packet counters, updated on the packet path and read from anywhere.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one virtio-net device. "tx" is what the guest sent.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames sent by the guest and written to the backend.
    pub tx_packets: AtomicU64,
    /// Their bytes (without the virtio header).
    pub tx_bytes: AtomicU64,
    /// Guest frames dropped (bad frame, backend error, policy).
    pub tx_dropped: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Their bytes (without the virtio header).
    pub rx_bytes: AtomicU64,
    /// Host frames dropped (guest buffer too small or unusable, policy).
    pub rx_dropped: AtomicU64,
    /// Descriptor chains that were malformed (loops, bad addresses, wrong direction).
    pub malformed_chains: AtomicU64,
    /// Times a frame had to wait because the guest had posted no RX buffer.
    pub rx_no_buffer: AtomicU64,
    /// Times TX had to wait because the backend would block.
    pub tx_backend_full: AtomicU64,
    /// Times the device gave up on the driver's rings (DEVICE_NEEDS_RESET).
    pub needs_reset: AtomicU64,
    /// Times TX stopped to wait for the shaper.
    pub tx_throttled: AtomicU64,
    /// Times RX stopped to wait for the shaper.
    pub rx_throttled: AtomicU64,
}

/// A plain copy of [`NetCounters`].
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
}

/// Add one.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Add `n`.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl NetCounters {
    /// Read every counter.
    pub fn snapshot(&self) -> NetCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCountersSnapshot {
            tx_packets: get(&self.tx_packets),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
            rx_packets: get(&self.rx_packets),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            malformed_chains: get(&self.malformed_chains),
            rx_no_buffer: get(&self.rx_no_buffer),
            tx_backend_full: get(&self.tx_backend_full),
            needs_reset: get(&self.needs_reset),
            tx_throttled: get(&self.tx_throttled),
            rx_throttled: get(&self.rx_throttled),
        }
    }
}
