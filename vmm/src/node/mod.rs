//! The node daemon's model: sliver specs as the node manager sends them, and the state
//! directory that survives daemon restarts. (The HTTP control socket and VMM supervision
//! build on these.)

pub mod error;
pub mod spec;
pub mod state;
