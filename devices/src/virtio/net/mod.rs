//! virtio-net (virtio 1.2, section 5.1) on a host backend (a TAP device in production).
//!
//! Each direction is a queue type that owns its state (ring, head buffer, iovecs, counters)
//! and runs one pipeline of named stages per frame, in an order stated once, in code:
//! [`tx`] (`TxQueue::transmit`) and [`rx`] (`RxQueue::receive`). The stages are the
//! [`shaper`], [`vnet_hdr`] (what a virtio header may carry), the [`frame_checks`],
//! [`anti_spoofing`] and the [`audit`]; which of the optional ones a NIC runs is its
//! [`Stages`]. No heap allocation per packet: each queue's buffers are allocated once, when
//! the driver activates the device.
// Casts on the packet path and in shared memory must not truncate or wrap silently.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]

pub mod anti_spoofing;
pub mod audit;
pub mod backend;
mod chain;
pub mod checksum;
pub mod config;
pub mod counters;
pub mod device;
pub mod features;
mod flow_table;
pub mod frame_checks;
pub mod gso;
pub mod headers;
mod queue;
mod rx;
mod rx_read;
pub mod shaper;
pub mod stages;
pub mod tap;
mod tx;
pub mod vnet_hdr;

pub use anti_spoofing::AntiSpoofing;
pub use audit::{AuditSink, AuditStage};
pub use backend::NetBackend;
pub use config::MacAddr;
pub use counters::{NetCounters, NetCountersSnapshot};
pub use device::NetDevice;
pub use shaper::{RateSource, Shaper};
pub use stages::Stages;
pub use tap::Tap;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// `virtio_net_hdr_v1`: the header in front of every frame with VIRTIO_F_VERSION_1.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame (without the virtio header) we carry: a 64 KiB IP packet plus Ethernet and
/// VLAN headers.
pub const MAX_FRAME_LEN: usize = 65_535 + 14 + 4;
/// Frame buffer size: header plus the largest frame.
pub const FRAME_BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Bytes of each frame the queues copy into the device: the virtio header and the headers
/// the stages read.
pub(crate) const HEAD_LEN: usize = VNET_HDR_LEN + headers::HEADER_BYTES;

/// `d` in nanoseconds, saturating (at about 584 years).
pub(crate) fn saturating_nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
