//! virtio 1.x: the device interface, the MMIO transport, and the devices.

pub mod device;
pub mod interrupt;
pub mod mmio;
pub mod net;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use device::{ActivateError, Activation, DeviceHealth, VirtioDevice};
pub use interrupt::VirtioInterrupt;
pub use mmio::{MmioTransport, TransportCounters};

/// Feature bit as a mask.
pub const fn feature(bit: u32) -> u64 {
    1u64 << bit
}
