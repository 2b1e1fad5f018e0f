//! virtio-net device tests through the guest-driver harness (`devices::virtio::test_utils`):
//! the data path and its stages, the shaper's backpressure, a malicious guest, the MMIO
//! transport's validation, and what virtio headers may carry, each at native speed without KVM.

mod datapath;
mod fixture;
mod malicious_guest;
mod queue_features;
mod shaper;
mod stages;
mod transport;
mod vnet_headers;
