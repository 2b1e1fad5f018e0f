//! `slicevisor run`: one micro-VM in the foreground, from its flags.

use std::io::Write;
use std::path::PathBuf;

use crate::disk_spec::DiskSpec;
use crate::exit::{ExitRecord, EXIT_SETUP_ERROR};
use crate::host_quirks::QuirkMode;
use crate::jail::{Bind, JailError, JailSpec, Preopened};
use crate::net_spec::NetSpec;
use crate::seccomp::SeccompMode;
use crate::vm::{self, VmConfig, VmError};

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
    /// A virtio-net device on a host TAP: tap=NAME[,mac=MAC][,ip=A.B.C.D][,offloads=on|off].
    /// Repeatable.
    #[arg(
        long = "net",
        value_name = "tap=NAME[,mac=MAC][,ip=A.B.C.D][,offloads=on|off]"
    )]
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
    /// Run jailed as UID:GID (needs root to start): new mount, IPC and PID namespaces, a root
    /// holding only this VM's files, no capabilities, no_new_privs, rlimits. The files the VM
    /// writes (--disk without ro, --audit-dir, the directories of --exit-file, --stats-file,
    /// --console-log and --console-socket) must be writable by UID.
    #[arg(long, value_name = "UID:GID")]
    pub jail: Option<crate::jail::JailSpec>,
    /// What a system call outside the VMM's seccomp allow-lists does: `kill` ends the VMM
    /// with the reason `seccomp: syscall NAME`; `log` lets it through and the kernel logs it.
    #[arg(long, value_enum, default_value_t = SeccompMode::Kill)]
    pub seccomp: SeccompMode,
    /// Take KVM's supported CPUID table from this file instead of asking KVM (which costs
    /// ~1 ms of each start where the host traps `cpuid`). The node daemon saves it at its
    /// start as STATE_DIR/kvm-supported-cpuid and passes it to its VMMs. It must come from
    /// this host's KVM: only its length and leaves 0 and 1 are checked (docs/node-daemon.md).
    #[arg(long, value_name = "PATH")]
    pub supported_cpuid: Option<PathBuf>,
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
            supported_cpuid: a.supported_cpuid,
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

/// Take ownership of inherited descriptor `fd` (checked to be open).
fn inherited(fd: i32, what: &str) -> Result<std::os::fd::OwnedFd, VmError> {
    use std::os::fd::FromRawFd;
    // SAFETY: fcntl(2) F_GETFD only asks whether `fd` is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(VmError::Resource(
            "an inherited descriptor (--net fd=)",
            std::io::Error::other(format!(
                "{what}: fd {fd}: {}",
                std::io::Error::last_os_error()
            )),
        ));
    }
    // SAFETY: the descriptor is open and was handed to this process for this one use; nothing
    // else in the process owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// What the jail shows: the kernel and initrd and read-only disks read-only; writable disks,
/// the audit directory and the directories of the run files read-write; the PVM parameter.
fn binds(config: &VmConfig, exit_file: Option<&std::path::Path>) -> Vec<Bind> {
    let mut binds = vec![Bind::ro(config.kernel.clone())];
    binds.extend(config.initrd.clone().map(Bind::ro));
    for disk in &config.disks {
        binds.push(Bind {
            path: disk.path.clone(),
            writable: !disk.read_only,
        });
    }
    binds.extend(config.audit.as_ref().map(|a| Bind::rw(a.dir.clone())));
    let run_files = [
        exit_file,
        config.stats_file.as_deref(),
        config.console_log.as_deref(),
        config.console_socket.as_deref(),
    ];
    for file in run_files.into_iter().flatten() {
        binds.extend(file.parent().map(|d| Bind::rw(d.to_owned())));
    }
    let pvm = std::path::Path::new(crate::host_quirks::PVM_NATIVE_PARAM);
    if pvm.exists() {
        binds.push(Bind::ro(pvm.to_owned()));
    }
    binds
}

/// Every path of `config` absolute and resolved, so that it names the same file in the jail.
/// A directory this makes for the jailed VMM (its audit directory) goes to `owner` (uid, gid).
fn resolve_paths(
    config: &mut VmConfig,
    exit_file: &mut Option<PathBuf>,
    owner: (u32, u32),
) -> Result<(), JailError> {
    use crate::jail::resolve;
    config.kernel = resolve(&config.kernel)?;
    for path in config
        .initrd
        .iter_mut()
        .chain(config.stats_file.iter_mut())
        .chain(config.console_log.iter_mut())
        .chain(config.console_socket.iter_mut())
        .chain(exit_file.iter_mut())
    {
        *path = resolve(path)?;
    }
    for disk in &mut config.disks {
        disk.path = resolve(&disk.path)?;
    }
    if let Some(audit) = &mut config.audit {
        if !audit.dir.exists() {
            std::fs::create_dir_all(&audit.dir)
                .and_then(|()| std::os::unix::fs::chown(&audit.dir, Some(owner.0), Some(owner.1)))
                .map_err(|source| JailError::Sys {
                    what: format!("creating --audit-dir {}", audit.dir.display()),
                    source,
                })?;
        }
        audit.dir = resolve(&audit.dir)?;
    }
    Ok(())
}

/// Open what needs privilege and resolve every path: the jail [`crate::jail::enter`] will
/// build from `spec`.
fn prepare_jail(
    spec: &JailSpec,
    config: &mut VmConfig,
    exit_file: &mut Option<PathBuf>,
    pre: &mut Preopened,
) -> Result<JailSpec, VmError> {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| VmError::Resource("/dev/kvm", e))?;
    pre.kvm = Some(kvm.into());
    for (spec, tap) in config.net.iter().zip(pre.taps.iter_mut()) {
        if tap.is_none() {
            *tap = Some(
                devices::virtio::net::tap::Tap::open(&spec.tap)
                    .map_err(crate::nic::NicError::from)?,
            );
        }
    }
    if let Some((path, _)) = &config.shaper {
        let ledger = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| crate::ledger::LedgerError::Io {
                path: path.clone(),
                source,
            })?;
        pre.ledger = Some(ledger);
    }
    resolve_paths(config, exit_file, (spec.uid, spec.gid))?;
    // What the jailed VMM writes but this (root) process makes: its exit file, reserved now,
    // and an audit directory made here.
    if let Some(path) = exit_file.as_deref() {
        if !ExitRecord::is_reserved(path) {
            ExitRecord::reserve(path)
                .and_then(|()| std::os::unix::fs::chown(path, Some(spec.uid), Some(spec.gid)))
                .map_err(|source| JailError::Sys {
                    what: format!("--exit-file {}", path.display()),
                    source,
                })?;
        }
    }
    let mut spec = spec.clone();
    spec.binds = binds(config, exit_file.as_deref());
    spec.vcpus = config.vcpus;
    Ok(spec)
}

/// Take inherited TAPs, jail if asked, prepare the seccomp filters, and run the VM.
fn jail_and_run(
    mut config: VmConfig,
    jail: Option<&JailSpec>,
    seccomp: SeccompMode,
    exit_file: &mut Option<PathBuf>,
) -> Result<crate::exit::ExitReason, VmError> {
    let mut pre = Preopened::default();
    let mut fds: Vec<i32> = config.net.iter().filter_map(|n| n.fd).collect();
    fds.sort_unstable();
    if let Some(w) = fds.windows(2).find(|w| w[0] == w[1]) {
        return Err(VmError::Resource(
            "an inherited descriptor (--net fd=)",
            std::io::Error::other(format!("fd {} is given to two --net devices", w[0])),
        ));
    }
    for spec in &config.net {
        pre.taps.push(match spec.fd {
            Some(fd) => Some(
                devices::virtio::net::tap::Tap::from_fd(&spec.tap, inherited(fd, &spec.tap)?)
                    .map_err(crate::nic::NicError::from)?,
            ),
            None => None,
        });
    }
    if let Some(path) = &config.supported_cpuid {
        pre.supported_cpuid =
            Some(crate::arch::cpuid_table::load(path).map_err(VmError::SupportedCpuid)?);
    }
    let jail = match jail {
        Some(jail) => Some(prepare_jail(jail, &mut config, exit_file, &mut pre)?),
        None => None,
    };
    // Filters compiled and the SIGSYS handler in place before the fork: the keeper enters
    // its own filter too.
    crate::seccomp::prepare(seccomp, exit_file.as_deref())?;
    if let Some(jail) = &jail {
        use std::os::fd::AsRawFd;
        let mut keep: Vec<i32> = pre
            .taps
            .iter()
            .flatten()
            .flat_map(|t| t.raw_fds())
            .collect();
        keep.extend(pre.kvm.as_ref().map(AsRawFd::as_raw_fd));
        keep.extend(pre.ledger.as_ref().map(AsRawFd::as_raw_fd));
        keep.extend(crate::seccomp::exit_fd());
        crate::jail::enter(jail, &keep)?;
    }
    vm::run(&config, pre)
}

/// Run the VM the flags describe in the foreground; returns the process exit code (see
/// [`crate::exit`]) after writing it, with the reason, to `--exit-file`.
pub fn run(args: RunArgs) -> i32 {
    let mut exit_file = args.exit_file.clone();
    let jail = args.jail.clone();
    let seccomp = args.seccomp;
    let config = VmConfig::from(args);
    let ended = jail_and_run(config, jail.as_ref(), seccomp, &mut exit_file);
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
