//! A "guest driver" harness: plays the guest on real guest memory, without KVM, so devices
//! can be tested and benchmarked at native speed; with a datagram socket pair as the host
//! side of a NIC and an audit sink that keeps what it was given.

mod audit_recorder;
mod dgram_backend;
mod guest_driver;

pub use audit_recorder::{recorded, AuditSeen};
pub use dgram_backend::DgramBackend;
pub use guest_driver::*;
