//! slicevisor's VMM: builds a micro-VM on KVM, owns its buses, IRQs, vCPUs and event loop.

pub mod arch;
pub mod audit;
pub mod boot;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod event_loop;
pub mod exit;
pub mod host_quirks;
pub mod kvm_vm;
pub mod memory;
pub mod metrics;
pub mod net_spec;
pub mod node;
pub mod shaper;
pub mod stats;
pub mod vcpu;
pub mod virtio_mmio;
pub mod vm;
