//! What a sliver's guest needs from slicevisor besides its kernel: the format of the config
//! disk the node daemon writes ([`nocloud`]), and `slicevisor-init`, the init of the
//! reference image that reads it (the binary's modules).

pub mod nocloud;
