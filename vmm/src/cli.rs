//! The `slicevisor` command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::exit::{ExitRecord, EXIT_SETUP_ERROR};
use crate::host_quirks::QuirkMode;
use crate::net_spec::NetSpec;
use crate::node::server::NodeConfig;
use crate::vm::{self, VmConfig};

/// slicevisor: PlanetLab-style slivers as KVM micro-VMs.
#[derive(Debug, Parser)]
#[command(name = "slicevisor", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot one micro-VM in the foreground; guest console on stdout, VMM log on stderr.
    ///
    /// Exit codes: 0 guest powered off or stopped by SIGINT/SIGTERM; 1 setup error;
    /// 2 guest kernel panic; 3 triple fault; 4 KVM error; 5 VMM error.
    Run(RunArgs),
    /// Serve the node API (HTTP + JSON) on a unix socket, keeping slivers in a state directory.
    Node(NodeArgs),
    /// Talk to a running node daemon.
    Ctl(crate::node::ctl::CtlArgs),
    /// Query and export the flow audit logs of a state directory.
    Audit {
        /// What to do.
        #[command(subcommand)]
        command: crate::audit::cli::AuditCommand,
    },
}

/// `slicevisor node` flags.
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// Control socket path (created mode 0600).
    #[arg(long, default_value = crate::node::ctl::DEFAULT_SOCKET)]
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
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::node::spec::MAX_RATE_BPS))]
    pub node_rate: Option<u64>,
    /// Do not keep rings of packet headers (flow records are always kept).
    #[arg(long)]
    pub no_capture: bool,
    /// What all guests together may receive, bit/s (default: no node limit).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=crate::node::spec::MAX_RATE_BPS))]
    pub node_rx_rate: Option<u64>,
}

/// `slicevisor run` flags.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// ELF vmlinux with a PVH entry (CONFIG_PVH=y).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Initramfs (cpio) for the guest.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments, after the VMM's own (console=ttyS0 reboot=k panic=-1 pci=off).
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(0..=1 << 30))]
    pub mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Kernel command-line workarounds for PVM-native KVM hosts.
    #[arg(long, value_enum, default_value_t = QuirkMode::Auto)]
    pub host_quirks: QuirkMode,
    /// A virtio-net device on a host TAP: tap=NAME[,mac=MAC]. Repeatable.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub net: Vec<NetSpec>,
    /// Write the exit code and reason here (JSON, atomically) when the VMM ends.
    #[arg(long)]
    pub exit_file: Option<PathBuf>,
    /// Write the packet counters here (JSON) every second and at exit.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// The sliver this VMM runs (shown in its process arguments; set by the node daemon).
    #[arg(long)]
    pub sliver: Option<String>,
    /// The node's shaper ledger (set by the node daemon): the NICs take their rates from it.
    #[arg(long, requires = "shaper_slot")]
    pub shaper_ledger: Option<PathBuf>,
    /// This sliver's slot in the shaper ledger.
    #[arg(long, requires = "shaper_ledger")]
    pub shaper_slot: Option<usize>,
    /// Keep flow records (and the header capture ring) of the NICs in this directory.
    #[arg(long, requires = "slice")]
    pub audit_dir: Option<PathBuf>,
    /// The slice the sliver belongs to (named in its flow records).
    #[arg(long)]
    pub slice: Option<String>,
    /// Do not capture packet headers (flow records are still kept).
    #[arg(long)]
    pub no_capture: bool,
    /// Size of the header capture ring, MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub capture_mib: u64,
    /// Bytes kept of each captured packet.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u16).range(14..=65535))]
    pub capture_snaplen: u16,
}

impl From<RunArgs> for VmConfig {
    fn from(a: RunArgs) -> Self {
        VmConfig {
            kernel: a.kernel,
            initrd: a.initrd,
            cmdline: a.cmdline,
            mem_mib: a.mem_mib,
            vcpus: a.vcpus,
            host_quirks: a.host_quirks,
            net: a.net,
            stats_file: a.stats_file,
            shaper: a.shaper_ledger.zip(a.shaper_slot),
            audit: a.audit_dir.map(|dir| crate::vm::AuditSetup {
                dir,
                identity: crate::audit::sink::Identity {
                    slice: a.slice.unwrap_or_default(),
                    sliver: a.sliver.unwrap_or_else(|| "-".into()),
                },
                capture: crate::audit::capture::CaptureConfig {
                    enabled: !a.no_capture,
                    snaplen: a.capture_snaplen,
                    bytes: a.capture_mib << 20,
                },
            }),
        }
    }
}

/// Run the CLI; returns the process exit code.
pub fn main() -> i32 {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
    match Cli::parse().command {
        Command::Node(args) => node_main(args),
        Command::Run(args) => run_main(args),
        Command::Ctl(args) => crate::node::ctl::run(&args),
        Command::Audit { command } => crate::audit::cli::run(&command),
    }
}

fn node_main(args: NodeArgs) -> i32 {
    let config = NodeConfig {
        socket: args.socket,
        state_dir: args.state_dir,
        socket_group: args.socket_group,
        guest_stop_timeout: std::time::Duration::from_secs(args.guest_stop_timeout),
        capture: !args.no_capture,
        node_rates: crate::shaper::coordinator::NodeRates {
            tx: args.node_rate.unwrap_or(u64::MAX),
            rx: args.node_rx_rate.unwrap_or(u64::MAX),
        },
    };
    match crate::node::server::run(&config) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("slicevisor: error: {e}");
            EXIT_SETUP_ERROR
        }
    }
}

fn run_main(args: RunArgs) -> i32 {
    let exit_file = args.exit_file.clone();
    let config = VmConfig::from(args);
    let (code, reason) = match vm::run(&config) {
        Ok(reason) => {
            let code = reason.exit_code();
            if code == 0 {
                log::info!("VM ended: {reason}");
            } else {
                log::error!("VM ended: {reason}");
            }
            (code, reason.to_string())
        }
        Err(e) => {
            eprintln!("slicevisor: error: {e}");
            (EXIT_SETUP_ERROR, format!("setup error: {e}"))
        }
    };
    if let Some(path) = exit_file {
        let record = ExitRecord { code, reason };
        if let Err(e) = record.write(&path) {
            log::error!("--exit-file {}: {e}", path.display());
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MIN_MEM_MIB;

    #[test]
    fn flags_parse_into_a_config() {
        let cli = Cli::try_parse_from([
            "slicevisor",
            "run",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--cmdline",
            "quiet",
            "--mem-mib",
            "256",
            "--vcpus",
            "2",
            "--host-quirks",
            "off",
        ])
        .expect("parse");
        let Command::Run(args) = cli.command else {
            panic!("parsed as run");
        };
        let c = VmConfig::from(args);
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.mem_mib, 256);
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.host_quirks, QuirkMode::Off);
        let default = Cli::try_parse_from(["slicevisor", "run", "--kernel", "/k"]).expect("parse");
        let Command::Run(args) = default.command else {
            panic!("parsed as run");
        };
        assert!(args.mem_mib >= MIN_MEM_MIB, "default memory must be valid");
    }

    #[test]
    fn audit_subcommands_parse() {
        use crate::audit::cli::AuditCommand;
        let cli = Cli::try_parse_from([
            "slicevisor",
            "audit",
            "query",
            "--state-dir",
            "/s",
            "--dst",
            "192.0.2.1",
            "--at",
            "2026-11-28T03:00:00Z",
            "--window",
            "5m",
            "--json",
        ])
        .expect("parse");
        let Command::Audit {
            command: AuditCommand::Query(q),
        } = cli.command
        else {
            panic!("parsed as audit query");
        };
        assert_eq!(
            (q.dst.as_deref(), q.window.as_deref(), q.json),
            (Some("192.0.2.1"), Some("5m"), true)
        );
        assert!(
            Cli::try_parse_from(["slicevisor", "audit", "query", "--state-dir", "/s"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "slicevisor",
            "audit",
            "export",
            "--state-dir",
            "/s",
            "--ipfix",
            "/f",
            "--since",
            "2026-11-28T00:00:00Z",
        ])
        .expect("parse");
        assert!(matches!(
            cli.command,
            Command::Audit {
                command: AuditCommand::Export(_)
            }
        ));
    }

    #[test]
    fn kernel_is_required() {
        assert!(Cli::try_parse_from(["slicevisor", "run"]).is_err());
    }
}
