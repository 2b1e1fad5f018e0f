//! `slicevisor run`: one micro-VM in the foreground, from its flags.

use std::io::Write;
use std::path::PathBuf;

use crate::disk_spec::DiskSpec;
use crate::exit::{ExitRecord, EXIT_SETUP_ERROR};
use crate::host_quirks::QuirkMode;
use crate::net_spec::NetSpec;
use crate::vm::{self, VmConfig};

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
    /// A virtio-net device on a host TAP: tap=NAME[,mac=MAC][,ip=A.B.C.D]. Repeatable.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC][,ip=A.B.C.D]")]
    pub net: Vec<NetSpec>,
    /// An IPv4 network (CIDR) no NIC's guest may send to: its frames are dropped as
    /// `dropped-policy` and audited. Repeatable.
    #[arg(long = "deny-dst", value_name = "CIDR")]
    pub deny_dst: Vec<ipnet::Ipv4Net>,
    /// A virtio-blk device on a host file: path=FILE[,ro][,id=NAME]. Repeatable; the first is
    /// /dev/vda, and the root file system (root=/dev/vda) unless --initrd or a root= is given.
    #[arg(long = "disk", value_name = "path=FILE[,ro][,id=NAME]")]
    pub disk: Vec<DiskSpec>,
    /// Write the exit code and reason here (JSON, atomically) when the VMM ends.
    #[arg(long)]
    pub exit_file: Option<PathBuf>,
    /// Write the packet counters here (JSON) every second and at exit.
    #[arg(long)]
    pub stats_file: Option<PathBuf>,
    /// Write the guest console's output to this log (rotated at 1 MiB to PATH.1) instead
    /// of stdout.
    #[arg(long, value_name = "PATH")]
    pub console_log: Option<PathBuf>,
    /// Listen on this unix socket for console clients (first byte `w`: types, `r`: watches).
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
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
            net: a
                .net
                .into_iter()
                .map(|n| NetSpec {
                    deny_dst: a.deny_dst.clone(),
                    ..n
                })
                .collect(),
            disks: a.disk,
            console_log: a.console_log,
            console_socket: a.console_socket,
            stats_file: a.stats_file,
            shaper: a.shaper_ledger.zip(a.shaper_slot),
            audit: a.audit_dir.map(|dir| crate::vm::AuditSetup {
                dir,
                identity: crate::audit_sink::Identity {
                    slice: a.slice.unwrap_or_default(),
                    sliver: a.sliver.unwrap_or_else(|| "-".into()),
                },
                capture: audit_store::capture::CaptureConfig {
                    enabled: !a.no_capture,
                    snaplen: a.capture_snaplen,
                    bytes: a.capture_mib << 20,
                },
            }),
        }
    }
}

/// Run the VM the flags describe in the foreground; returns the process exit code (see
/// [`crate::exit`]) after writing it, with the reason, to `--exit-file`.
pub fn run(args: RunArgs) -> i32 {
    let exit_file = args.exit_file.clone();
    let config = VmConfig::from(args);
    let ended = vm::run(&config);
    let (code, reason) = match &ended {
        Ok(reason) => (reason.exit_code(), reason.to_string()),
        Err(e) => (EXIT_SETUP_ERROR, format!("setup error: {e}")),
    };
    // The exit record first: it is what the supervisor reads, and it fits in the space
    // reserved for it even when the disk (which may hold stderr too) is full.
    if let Some(path) = exit_file {
        let record = ExitRecord {
            code,
            reason: reason.clone(),
        };
        if let Err(e) = record.write(&path) {
            log::error!("--exit-file {}: {e}", path.display());
        }
    }
    match ended {
        Ok(_) if code == 0 => log::info!("VM ended: {reason}"),
        Ok(_) => log::error!("VM ended: {reason}"),
        Err(e) => {
            // Not eprintln!: it panics when stderr cannot be written (a full disk).
            let _ = writeln!(std::io::stderr(), "slicevisor: error: {e}");
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::memory::MIN_MEM_MIB;

    /// `slicevisor run`'s flags on their own.
    #[derive(Debug, Parser)]
    struct Flags {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        Flags::try_parse_from(std::iter::once("run").chain(args.iter().copied())).map(|f| f.run)
    }

    #[test]
    fn flags_parse_into_a_config() {
        let args = parse(&[
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
        let c = VmConfig::from(args);
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!(c.mem_mib, 256);
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.host_quirks, QuirkMode::Off);
        let default = parse(&["--kernel", "/k"]).expect("parse");
        assert!(
            default.mem_mib >= MIN_MEM_MIB,
            "default memory must be valid"
        );
    }

    #[test]
    fn kernel_is_required() {
        assert!(parse(&[]).is_err());
    }
}
