//! The node daemon (`slicevisor node`): the node manager's HTTP + JSON API on a unix socket,
//! sliver specs and the state directory that survives restarts, one supervised VMM process per
//! running sliver, each sliver's TAP on the host, and the node-wide bandwidth [`shares`].
//! [`ctl_cmd`] is its client (`slicevisor ctl`).

pub mod api;
pub mod client;
pub mod console_api;
pub mod cpu_guarantee;
pub mod ctl_cmd;
pub mod ctl_console;
pub mod ctl_ssh;
pub mod error;
pub mod host_net;
pub mod http_serve;
pub mod image_cmd;
pub mod images;
pub mod images_api;
pub mod metrics;
pub mod name_locks;
pub mod nat_watch;
pub mod net_plan;
pub mod nft_rules;
pub mod node;
pub mod node_cmd;
pub mod published_ports;
pub mod reconcile;
pub mod registry;
pub mod server;
pub mod shares;
pub mod sliver_addresses;
pub mod sliver_cgroups;
pub mod sliver_config;
pub mod sliver_disks;
pub mod spec;
pub mod state;
pub mod supervisor;
pub mod uplink;
pub mod vmm_jail;
pub mod vmm_procs;
