//! The node daemon: sliver specs as the node manager sends them, the state directory that
//! survives daemon restarts, and the HTTP + JSON API on a unix socket. (Starting, stopping
//! and supervising VMM processes comes next.)

pub mod api;
pub mod client;
pub mod ctl;
pub mod error;
pub mod host_net;
pub mod registry;
pub mod server;
pub mod spec;
pub mod state;
pub mod supervisor;
