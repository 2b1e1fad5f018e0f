//! Devices of a slicevisor micro-VM.
//!
//! Devices see guest memory, queues, an interrupt trait and file descriptors. They never touch
//! KVM: the VMM wires their interrupts (irqfd) and their registers (port-I/O and MMIO buses).

pub mod bus_device;
pub mod guest_events;
pub mod interrupt;
pub mod legacy;
pub mod virtio;

pub use bus_device::BusDevice;
pub use guest_events::{GuestEvent, GuestEventSink};
pub use interrupt::{EventFdInterrupt, Interrupt};
