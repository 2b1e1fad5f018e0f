//! Helpers for slicevisor's end-to-end tests and benchmarks: tiny hand-assembled guests
//! packaged as PVH ELF kernels, and running the `slicevisor` binary.

pub mod daemon;
pub mod guest;
pub mod inject;
pub mod netns;
pub mod run;
pub mod shaping;
pub mod tiny_guest;
