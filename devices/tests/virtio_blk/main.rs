//! virtio-blk device tests through the guest-driver harness (`devices::virtio::test_utils`):
//! every request type and feature, and a malicious guest, at native speed without KVM.

mod fixture;
mod malicious_guest;
mod requests;
