//! `slicevisor node`: the daemon's flags, and serving until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::time::Duration;

use crate::ctl_cmd::DEFAULT_SOCKET;
use crate::node::AuditRetention;
use crate::server::{NodeConfig, NodeError};
use crate::shares::coordinator::NodeRates;
use crate::spec::MAX_RATE_BPS;
use crate::uplink::NetConfig;

/// `slicevisor node` flags.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Control socket path (created mode 0600).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Directory for the daemon's state.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Numeric group id allowed to use the socket (mode 0660 instead of 0600).
    #[arg(long)]
    pub socket_group: Option<u32>,
    /// Seconds a guest gets to power off when its sliver is stopped, before SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub guest_stop_timeout: u64,
    /// What all guests together may send, bit/s (shared by weight; default: no node limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_RATE_BPS))]
    pub node_rate: Option<u64>,
    /// Do not keep rings of packet headers (flow records are always kept).
    #[arg(long)]
    pub no_capture: bool,
    /// What all guests together may receive, bit/s (default: no node limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=MAX_RATE_BPS))]
    pub node_rx_rate: Option<u64>,
    /// Seconds a deleted sliver's capture ring is kept (0: removed at delete). Its flow
    /// records are kept by the audit retention policy (30 days) either way.
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub capture_retention_after_delete: u64,
    /// Seconds a client has to send a request head (after connecting, or after the last
    /// response on a kept-alive connection), and then its body; then the connection closes.
    #[arg(long, default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub read_timeout: u64,
    /// Connections served at once (default: 1024, or what the open-file limit leaves); the
    /// node manager (root) has 16 more.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// The node's outside interface: slivers reach the outside through it (masqueraded),
    /// and their published ports are forwarded from its address. Without it slivers are
    /// host-only.
    #[arg(long, value_name = "IFACE")]
    pub uplink: Option<String>,
    /// Where slivers whose spec gives no addresses get theirs (a /30 each), e.g.
    /// 10.64.0.0/16; needs --uplink.
    #[arg(long, value_name = "CIDR")]
    pub sliver_net: Option<ipnet::Ipv4Net>,
    /// A network slivers may not reach (the site's own); repeatable; needs --uplink.
    #[arg(long, value_name = "CIDR")]
    pub deny_dst: Vec<ipnet::Ipv4Net>,
    /// A DNS resolver slivers are told to use; repeatable; needs --uplink.
    #[arg(long, value_name = "ADDR")]
    pub resolver: Vec<std::net::Ipv4Addr>,
    /// The uids/gids jailed VMMs run as, one per sliver; no real user or group may have one.
    #[arg(long, value_name = "FIRST-LAST", default_value = crate::vmm_jail::DEFAULT_JAIL_IDS)]
    pub jail_ids: crate::vmm_jail::JailIds,
    /// Run VMMs unjailed, as root with every capability (GET /healthz says so).
    #[arg(long)]
    pub no_jail: bool,
}

impl From<NodeArgs> for NodeConfig {
    fn from(args: NodeArgs) -> Self {
        NodeConfig {
            socket: args.socket,
            state_dir: args.state_dir,
            socket_group: args.socket_group,
            guest_stop_timeout: Duration::from_secs(args.guest_stop_timeout),
            capture: !args.no_capture,
            node_rates: NodeRates {
                tx: args.node_rate.unwrap_or(u64::MAX),
                rx: args.node_rx_rate.unwrap_or(u64::MAX),
            },
            audit_retention: AuditRetention {
                capture_after_delete: Duration::from_secs(args.capture_retention_after_delete),
                ..AuditRetention::default()
            },
            read_timeout: Duration::from_secs(args.read_timeout),
            max_connections: args.max_connections,
            net: NetConfig {
                uplink: args.uplink,
                sliver_net: args.sliver_net,
                deny_dst: args.deny_dst,
                resolvers: args.resolver,
            },
            jail: (!args.no_jail).then_some(args.jail_ids),
        }
    }
}

/// Serve the node API until SIGTERM/SIGINT; the error names the flag that failed.
pub fn run(args: NodeArgs) -> Result<(), NodeError> {
    crate::server::run(&NodeConfig::from(args))
}
