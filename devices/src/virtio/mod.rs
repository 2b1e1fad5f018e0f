//! virtio 1.x: the device interface, the MMIO transport, and the devices (net, block).

pub mod block;
pub mod config_space;
pub mod interrupt_status;
pub(crate) mod iovec;
pub mod mmio;
pub mod net;
pub mod split_ring;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod virtio_device;

pub use interrupt_status::VirtioInterrupt;
pub use mmio::{MmioTransport, TransportCounters};
pub use virtio_device::{ActivateError, Activation, DeviceHealth, VirtioDevice};

/// Feature bit as a mask.
pub const fn feature(bit: u32) -> u64 {
    1u64 << bit
}
