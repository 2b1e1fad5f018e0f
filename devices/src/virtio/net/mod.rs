//! virtio-net on a host backend (a TAP device in production).
//!
//! The TX path is one pipeline of named stages (`tx.rs`): descriptor chain → shaper
//! (`shaper.rs`: admits before the chain is read, is charged what was sent) → frame checks →
//! policy (anti-spoofing and audit) → backend. RX (`rx.rs`): guest buffer → shaper → backend →
//! policy → descriptor chain. No heap allocation per packet: frames pass through two buffers
//! allocated once per device.

pub mod audit;
pub mod backend;
mod chain;
pub mod config;
pub mod counters;
pub mod device;
pub mod frame;
pub mod policy;
mod rx;
pub mod shaper;
pub mod tap;
#[cfg(test)]
mod tests;
mod tx;

pub use backend::NetBackend;
pub use config::MacAddr;
pub use counters::{NetCounters, NetCountersSnapshot};
pub use device::NetDevice;
pub use policy::{ForwardAll, PacketPolicy, Verdict};
pub use shaper::{Direction, RateSource, Shaper};
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
