//! slicevisor's VMM: one sliver's micro-VM on KVM. It builds guest memory, loads the kernel
//! through its PVH entry, wires the devices (port-I/O and MMIO buses, irqfd, ioeventfd), runs
//! the vCPU threads and the device event loop, and says why the VM ended.
//!
//! What the node daemon reads of a running VMM is defined here too, so both sides share one
//! definition: the shaper [`ledger`], the [`stats`] file and the [`exit`] record.

pub mod arch;
pub mod attach;
pub mod audit_sink;
pub mod boot;
pub mod boot_report;
pub mod bus;
pub mod clock;
pub mod console;
pub mod disk_spec;
pub mod drives;
pub mod event_loop;
pub mod exit;
pub mod fd_table;
pub mod host_quirks;
pub mod jail;
pub mod kvm_vm;
pub mod ledger;
pub mod memory;
pub mod net_spec;
pub mod nic;
pub mod run_cmd;
pub mod seccomp;
pub mod slot_rate;
pub mod stats;
pub mod test_trigger;
pub mod vcpu;
pub mod vm;
