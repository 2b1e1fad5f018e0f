//! One VMM process per running sliver: started as `slicevisor-vmm run`, watched until it exits
//! (its exit is noticed at once and recorded with the reason), stopped by asking the guest to
//! power off, then with SIGTERM and, if need be, SIGKILL. After a daemon restart, VMMs that
//! kept running are re-adopted through a pidfd instead of being orphaned or started twice.

use std::collections::HashMap;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use vmm::exit::ExitRecord;
use vmm::ledger::Ledger;

use crate::error::SliverError;
use crate::host_net;
use crate::registry::Registry;
use crate::shares::slots;
use crate::sliver_disks::SliverDisks;
use crate::state::{SliverRecord, SliverState};
use crate::vmm_procs::{self, signal};

/// The descriptor a VMM inherits its TAP on (`--net ...,fd=3`).
const TAP_FD: i32 = 3;

/// How long a VMM gets to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Starts, watches and stops VMM processes.
#[derive(Debug)]
pub struct Supervisor {
    registry: Arc<Registry>,
    guest_grace: Duration,
    exe: PathBuf,
    run_dir: PathBuf,
    /// The daemon's state directory (audit logs live in `audit/`).
    state_dir: PathBuf,
    /// Whether VMMs capture packet headers.
    capture: bool,
    /// The shaper ledger shared with the VMMs.
    ledger: Arc<Ledger>,
    /// Per watched VMM: becomes `true` once its exit has been recorded.
    exited: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Per sliver: its cgroup's out-of-memory kills when its VMM started.
    oom_kills_at_start: Mutex<HashMap<String, u64>>,
    /// What VMMs are started under.
    policy: VmmPolicy,
}

/// What the daemon's VMMs are started under, beyond their specs.
#[derive(Debug, Clone, Default)]
pub struct VmmPolicy {
    /// On a node with an uplink: what slivers may not reach and their resolvers.
    pub guest_net: Option<GuestNet>,
    /// Where slivers' cgroups go (`None`: no cgroups, as `GET /healthz` says).
    pub cgroups: Option<crate::sliver_cgroups::Cgroups>,
    /// The ids jailed VMMs run as (`None`: VMMs run unjailed, as root, as `GET /healthz`
    /// says).
    pub jail: Option<crate::vmm_jail::JailIds>,
    /// KVM's supported CPUID table, saved once at the daemon's start and handed to every VMM
    /// (`run --supported-cpuid`; `None`: each VMM asks KVM itself).
    pub supported_cpuid: Option<PathBuf>,
}

/// What a sliver's VMM and guest are told on a node with an uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNet {
    /// Destinations the VMM drops (`slicevisor run --deny-dst`).
    pub deny_dst: Vec<ipnet::Ipv4Net>,
    /// DNS resolvers for the guest.
    pub resolvers: Vec<std::net::Ipv4Addr>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The MAC of sliver `name`'s NIC: its spec's, else derived from its TAP's name.
pub fn sliver_mac(name: &str, net: &crate::spec::SliverNet) -> String {
    match &net.mac {
        Some(mac) => mac.clone(),
        None => vmm::net_spec::NetSpec {
            tap: host_net::tap_name(name),
            mac: None,
            ip: None,
            deny_dst: Vec::new(),
            fd: None,
            offloads: true,
        }
        .mac_or_derived()
        .to_string(),
    }
}

/// Whether a sliver in `state` should have a VMM.
pub(crate) fn active(state: SliverState) -> bool {
    matches!(
        state,
        SliverState::Starting | SliverState::Running | SliverState::Stopping
    )
}

impl Supervisor {
    /// A supervisor running `exe run` (`slicevisor-vmm`) for VMMs, keeping exit files and logs in
    /// `state_dir/run`.
    pub fn new(
        registry: Arc<Registry>,
        exe: PathBuf,
        state_dir: &Path,
        guest_grace: Duration,
        ledger: Arc<Ledger>,
        capture: bool,
        policy: VmmPolicy,
    ) -> std::io::Result<Self> {
        let run_dir = state_dir.join("run");
        std::fs::create_dir_all(&run_dir)?;
        Ok(Self {
            registry,
            guest_grace,
            exe,
            run_dir,
            state_dir: state_dir.to_owned(),
            capture,
            ledger,
            exited: Mutex::new(HashMap::new()),
            oom_kills_at_start: Mutex::new(HashMap::new()),
            policy,
        })
    }

    /// Sliver `name`'s run directory: its VMM's exit record, counters, log, console log and
    /// socket (one directory per sliver, so that a jailed VMM sees only its own).
    pub fn sliver_run_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    fn exit_file(&self, name: &str) -> PathBuf {
        vmm_procs::exit_file(&self.run_dir, name)
    }

    fn stats_file(&self, name: &str) -> PathBuf {
        self.sliver_run_dir(name).join("stats.json")
    }

    /// The packet counters of sliver `name`'s current (or last) VMM; zeros before any ran.
    pub fn counters(&self, name: &str) -> vmm::stats::SliverCounters {
        vmm::stats::SliverCounters::read(&self.stats_file(name)).unwrap_or_default()
    }

    /// The VMM's own log (appended across runs).
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.sliver_run_dir(name).join("vmm.log")
    }

    /// The guest console's log, newest last: the rotated part, then the current one (see
    /// `vmm::console`; together at most 2 MiB).
    pub fn console_logs(&self, name: &str) -> [PathBuf; 2] {
        let dir = self.sliver_run_dir(name);
        [dir.join("console.1"), dir.join("console")]
    }

    /// What slivers are told on a node with an uplink.
    pub fn guest_net(&self) -> Option<&GuestNet> {
        self.policy.guest_net.as_ref()
    }

    /// Where slivers' cgroups are, if the node makes them.
    pub fn cgroups(&self) -> Option<&crate::sliver_cgroups::Cgroups> {
        self.policy.cgroups.as_ref()
    }

    /// The running VMM's console socket.
    pub fn console_socket(&self, name: &str) -> PathBuf {
        self.sliver_run_dir(name).join("console.sock")
    }

    fn watch(&self, name: &str) -> watch::Sender<bool> {
        let (tx, rx) = watch::channel(false);
        self.exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), rx);
        tx
    }

    /// The ids jailed VMMs run as, if they are jailed.
    pub fn jail(&self) -> Option<&crate::vmm_jail::JailIds> {
        self.policy.jail.as_ref()
    }

    /// Sliver `name`'s jail id, with its run directory, audit directory and disks handed to
    /// it; `None` when VMMs are not jailed.
    fn prepare_jail(&self, name: &str, r: &SliverRecord) -> std::io::Result<Option<u32>> {
        let Some(ids) = &self.policy.jail else {
            return Ok(None);
        };
        let index = self
            .registry
            .jail_index(name)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let id = ids.id(index).map_err(std::io::Error::other)?;
        let audit = audit_store::sliver_dir(&self.state_dir, name);
        std::fs::create_dir_all(&audit)?;
        let mut own = vec![self.sliver_run_dir(name), audit];
        if r.spec.vref.is_some() {
            let disks = SliverDisks::at(&self.state_dir);
            own.push(disks.root_path(name));
            own.push(disks.cidata_path(name));
        }
        for path in &own {
            crate::vmm_jail::hand_over(path, id).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("handing {} to id {id}: {e}", path.display()),
                )
            })?;
        }
        Ok(Some(id))
    }

    fn command(&self, name: &str, r: &SliverRecord) -> std::io::Result<tokio::process::Command> {
        let spec = &r.spec;
        let jail_id = self.prepare_jail(name, r)?;
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("run")
            .args(["--sliver", name])
            .arg("--exit-file")
            .arg(self.exit_file(name))
            .arg("--stats-file")
            .arg(self.stats_file(name))
            .arg("--console-log")
            .arg(&self.console_logs(name)[1])
            .arg("--console-socket")
            .arg(self.console_socket(name))
            .arg("--kernel")
            .arg(&spec.kernel)
            .args(["--mem-mib", &spec.mem_mib.to_string()])
            .args(["--vcpus", &spec.vcpus.to_string()]);
        if let Some(initrd) = &spec.initrd {
            cmd.arg("--initrd").arg(initrd);
        }
        if spec.vref.is_some() {
            // The root disk (/dev/vda: the VMM adds root=/dev/vda rw), then the config disk.
            let disks = SliverDisks::at(&self.state_dir);
            let mut root = std::ffi::OsString::from("path=");
            root.push(disks.root_path(name));
            root.push(",id=root");
            let mut cidata = std::ffi::OsString::from("path=");
            cidata.push(disks.cidata_path(name));
            cidata.push(",ro,id=cidata");
            cmd.arg("--disk").arg(root).arg("--disk").arg(cidata);
        }
        cmd.arg("--audit-dir")
            .arg(audit_store::sliver_dir(&self.state_dir, name))
            .args(["--slice", &spec.slice]);
        if let Some(id) = jail_id {
            cmd.arg("--jail").arg(format!("{id}:{id}"));
        }
        if !self.capture {
            cmd.arg("--no-capture");
        }
        // A table removed since the daemon's start: the VMM asks KVM itself.
        if let Some(table) = self.policy.supported_cpuid.as_ref().filter(|t| t.exists()) {
            cmd.arg("--supported-cpuid").arg(table);
        }
        let mut cmdline = Vec::new();
        if let Some(net) = &spec.net {
            let tap = host_net::tap_name(name);
            let mac = sliver_mac(name, net);
            let ip = net.guest_cidr().map(|(ip, _)| format!(",ip={ip}"));
            // The daemon opens the TAP: the VMM gets it as fd 3 and never needs
            // CAP_NET_ADMIN or /dev/net/tun.
            let opened =
                devices::virtio::net::tap::Tap::open(&tap).map_err(std::io::Error::other)?;
            cmd.arg("--net").arg(format!(
                "tap={tap},mac={mac}{},fd={TAP_FD}",
                ip.unwrap_or_default()
            ));
            // SAFETY: the closure runs in the child between fork and exec and only calls
            // async-signal-safe functions (dup2, fcntl) on the TAP's fd, which it owns.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&opened);
                    let rc = if fd == TAP_FD {
                        libc::fcntl(fd, libc::F_SETFD, 0)
                    } else {
                        libc::dup2(fd, TAP_FD)
                    };
                    if rc < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            if let Some(slot) = slots::find(&self.ledger, name) {
                cmd.arg("--shaper-ledger")
                    .arg(self.ledger.path())
                    .args(["--shaper-slot", &slot.to_string()]);
            }
            match (&self.policy.guest_net, net.guest_cidr(), net.subnet()) {
                (Some(g), Some((guest, _)), Some(subnet)) => {
                    for deny in &g.deny_dst {
                        cmd.arg("--deny-dst").arg(deny.to_string());
                    }
                    // The kernel's syntax (Documentation/admin-guide/nfs/nfsroot.rst):
                    // client:server:gw:netmask:hostname:device:autoconf:dns0:dns1.
                    let dns = |i: usize| g.resolvers.get(i).map(ToString::to_string);
                    cmdline.push(format!(
                        "ip={guest}::{}:{}::eth0:off:{}:{}",
                        net.host_ipv4,
                        subnet.netmask(),
                        dns(0).unwrap_or_default(),
                        dns(1).unwrap_or_default()
                    ));
                }
                _ => cmdline.push(format!("ip={}", net.ipv4)),
            }
        }
        cmdline.extend(spec.cmdline.clone());
        if !cmdline.is_empty() {
            cmd.arg("--cmdline").arg(cmdline.join(" "));
        }
        // O_NOFOLLOW: the directory belongs to the sliver's jail id.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.log_file(name))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            // Its own process group: signals meant for the daemon do not reach the VMMs.
            .process_group(0)
            .kill_on_drop(false);
        if let Some(cgroups) = &self.policy.cgroups {
            // Its cgroup with the spec's limits, joined by the child itself before exec, so
            // that the VMM never runs outside it.
            cgroups
                .apply(name, &spec.cgroup_limits())
                .map_err(std::io::Error::other)?;
            let join = cgroups.joiner(name);
            // SAFETY: the closure runs in the child between fork and exec and only calls
            // `Joiner::join_self`, which is async-signal-safe and allocates nothing.
            unsafe {
                cmd.pre_exec(move || join.join_self());
            }
        }
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // async-signal-safe functions (sigemptyset, sigaddset, pthread_sigmask).
        unsafe {
            cmd.pre_exec(|| {
                // Start with SIGTERM/SIGINT blocked: the VMM unblocks them once it handles
                // them, so a stop right after start is delivered then instead of killing a
                // half-built VM.
                let mut set = std::mem::zeroed::<libc::sigset_t>();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGTERM);
                libc::sigaddset(&mut set, libc::SIGINT);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        Ok(cmd)
    }

    /// The directory of the VMMs' exit, stats and log files.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Whether the exit of sliver `name`'s VMM is being watched (it runs, as far as we know).
    pub fn watching(&self, name: &str) -> bool {
        self.exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .is_some_and(|rx| !*rx.borrow() && rx.has_changed().is_ok())
    }

    /// Forget sliver `name` (deleted): its watch entry goes.
    pub fn forget(&self, name: &str) {
        self.exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    /// Start the VMM of sliver `name` (the caller holds the name's operation lock).
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<SliverRecord, SliverError> {
        let (_, record) = self.registry.update(name, |r| match r.state {
            SliverState::Created | SliverState::Stopped | SliverState::Failed => {
                r.state = SliverState::Starting;
                r.exit_reason = None;
                Ok(())
            }
            s => Err(SliverError::conflict(
                None,
                format!("sliver {name:?} is {}", s.as_str()),
            )),
        })?;
        let _ = std::fs::remove_file(self.stats_file(name));
        // Room for the VMM's exit record, made now, while there is space.
        let reserved = std::fs::create_dir_all(self.sliver_run_dir(name))
            .and_then(|()| ExitRecord::reserve(&self.exit_file(name)));
        if let Err(e) = reserved {
            let _ = std::fs::remove_file(self.exit_file(name));
            self.registry.update(name, |r| {
                r.state = SliverState::Failed;
                r.exit_reason = Some(format!("reserving the exit file: {e}"));
                Ok(())
            })?;
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC | libc::EDQUOT) => {
                    SliverError::Storage(crate::state::StateError::NoSpace {
                        path: self.exit_file(name),
                    })
                }
                _ => SliverError::Vmm {
                    what: "reserving the VMM's exit file",
                    source: e,
                },
            });
        }
        let spawned = self.command(name, &record).and_then(|mut cmd| cmd.spawn());
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let reason = format!("starting the VMM: {e}");
                self.registry.update(name, |r| {
                    r.state = SliverState::Failed;
                    r.exit_reason = Some(reason.clone());
                    Ok(())
                })?;
                return Err(match e.raw_os_error() {
                    Some(libc::ENOSPC | libc::EDQUOT) => {
                        SliverError::Storage(crate::state::StateError::NoSpace {
                            path: self.log_file(name),
                        })
                    }
                    _ => SliverError::Vmm {
                        what: "starting the VMM",
                        source: e,
                    },
                });
            }
        };
        let pid = child.id().unwrap_or(0);
        if let Some(kills) = self.oom_kills(name) {
            self.oom_kills_at_start
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.to_string(), kills);
        }
        let recorded = self.registry.update(name, |r| {
            r.state = SliverState::Running;
            r.pid = Some(pid);
            r.started_at = Some(now_secs());
            Ok(())
        });
        let record = match recorded {
            Ok((_, record)) => record,
            Err(e) => {
                // Not recorded running: it must not run.
                let _ = child.start_kill();
                let status = child.wait().await.ok();
                self.record_exit(name, status);
                return Err(e);
            }
        };
        log::info!("sliver {name}: VMM started, pid {pid}");
        let tx = self.watch(name);
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let status = child.wait().await.ok();
            me.record_exit(&name, status);
            let _ = tx.send(true);
        });
        Ok(record)
    }

    /// Out-of-memory kills in sliver `name`'s cgroup so far (cgroup v2 `memory.events`, v1
    /// `memory.oom_control`: the `oom_kill` line, Linux 4.13+); `None` without one.
    fn oom_kills(&self, name: &str) -> Option<u64> {
        let cgroups = self.policy.cgroups.as_ref()?;
        cgroups.dirs(name).iter().find_map(|dir| {
            ["memory.events", "memory.oom_control"]
                .iter()
                .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
                .and_then(|text| {
                    text.lines()
                        .find_map(|l| l.strip_prefix("oom_kill "))
                        .and_then(|n| n.trim().parse().ok())
                })
        })
    }

    /// Whether the kernel's OOM killer ended sliver `name`'s VMM: its cgroup counted a kill
    /// since this daemon started the VMM (unknown, so `false`, for a VMM an earlier daemon
    /// started: the count is cumulative).
    fn killed_for_memory(&self, name: &str) -> bool {
        let before = self
            .oom_kills_at_start
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        before.is_some_and(|before| self.oom_kills(name).is_some_and(|now| now > before))
    }

    /// Record how the VMM of `name` ended, from its exit file, or from `status`.
    fn record_exit(&self, name: &str, status: Option<ExitStatus>) {
        let from_file = ExitRecord::read(&self.exit_file(name)).ok();
        let (state, reason) = match (from_file, status) {
            (Some(rec), _) => {
                let state = if rec.code == 0 {
                    SliverState::Stopped
                } else {
                    SliverState::Failed
                };
                (state, rec.reason)
            }
            (None, Some(st)) => match (st.signal(), st.code()) {
                (Some(libc::SIGKILL), _) if self.killed_for_memory(name) => {
                    (SliverState::Failed, "out of memory".to_string())
                }
                (Some(sig), _) => (SliverState::Failed, format!("VMM killed by signal {sig}")),
                (None, Some(0)) => (
                    SliverState::Stopped,
                    "VMM exited with code 0 without a reason".to_string(),
                ),
                (None, code) => (
                    SliverState::Failed,
                    format!(
                        "VMM exited with code {} without a reason",
                        code.unwrap_or(-1)
                    ),
                ),
            },
            (None, None) if self.killed_for_memory(name) => {
                (SliverState::Failed, "out of memory".to_string())
            }
            (None, None) => (
                SliverState::Failed,
                "VMM ended while the daemon was not watching; no exit record".to_string(),
            ),
        };
        log::info!("sliver {name}: VMM ended: {reason}");
        slots::vmm_gone(&self.ledger, name);
        self.registry.record_fact(name, |r| {
            r.state = state;
            r.pid = None;
            r.exit_reason = Some(reason.clone());
        });
    }

    /// Stop the VMM of `name`: ask the guest to power off (SIGUSR1 makes the VMM type a
    /// request on the guest console), then SIGTERM after the guest grace period, then SIGKILL
    /// after [`STOP_GRACE`]. Waits for the exit to be recorded. Stopping a sliver that is not
    /// running is not an error.
    pub async fn stop(self: &Arc<Self>, name: &str) -> Result<SliverRecord, SliverError> {
        let (pid, _) = self.registry.update(name, |r| match (r.state, r.pid) {
            (SliverState::Starting | SliverState::Running | SliverState::Stopping, Some(pid)) => {
                r.state = SliverState::Stopping;
                Ok(Some(pid))
            }
            _ => Ok(None),
        })?;
        let Some(pid) = pid else {
            return self.registry.get(name);
        };
        if !self.watching(name) {
            self.adopt(name, pid);
            if !self.watching(name) {
                // It had ended: that is now recorded.
                return self.registry.get(name);
            }
        }
        let rx = self
            .exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned();
        let Some(mut rx) = rx else {
            return Err(SliverError::Internal(format!(
                "stopping sliver {name:?}: its VMM {pid} cannot be watched"
            )));
        };
        let steps = [
            (
                libc::SIGUSR1,
                self.guest_grace,
                "the guest's power-off request",
            ),
            (libc::SIGTERM, STOP_GRACE, "SIGTERM"),
            (libc::SIGKILL, STOP_GRACE, "SIGKILL"),
        ];
        for (sig, grace, what) in steps {
            signal(pid, sig);
            match tokio::time::timeout(grace, rx.wait_for(|done| *done)).await {
                Ok(Ok(_)) => return self.registry.get(name),
                Ok(Err(_)) => {
                    return Err(SliverError::Internal(format!(
                        "stopping sliver {name:?}: lost the watch on its VMM {pid}"
                    )))
                }
                Err(_) => {
                    log::warn!("sliver {name}: VMM {pid} still running {grace:?} after {what}")
                }
            }
        }
        Err(SliverError::Internal(format!(
            "sliver {name:?}: its VMM {pid} survived SIGKILL; it stays stopping"
        )))
    }

    /// Watch VMM `pid` of sliver `name`, started by an earlier daemon (or by this one before
    /// its record said so), and record its exit; if it is gone already (or is not ours),
    /// record that the VMM the record names has ended.
    fn adopt(self: &Arc<Self>, name: &str, pid: u32) {
        let exit = match vmm_procs::ExitWatch::ours(pid, name, &self.run_dir) {
            Ok(exit) => exit,
            Err(_) => {
                let stale = self
                    .registry
                    .get(name)
                    .is_ok_and(|r| active(r.state) && r.pid.is_none_or(|p| p == pid));
                if stale {
                    self.record_exit(name, None);
                }
                return;
            }
        };
        log::info!("sliver {name}: adopted running VMM, pid {pid}");
        let tx = self.watch(name);
        let me = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            exit.exited().await;
            me.record_exit(&name, None);
            let _ = tx.send(true);
        });
    }

    /// Make sliver `name`'s VMM what its record says (the caller holds the name's lock, so no
    /// other operation on it is under way). `running` is what [`vmm_procs::scan`] found (or
    /// its targeted form, `Node::running_vmms_of`). A
    /// sliver that should have a VMM and has one that nobody watches gets it adopted (a start
    /// cut off before its pid was recorded is thereby completed), or its end recorded; any
    /// further VMM of the name is stopped; a sliver that should have none has any VMM that
    /// runs anyway stopped. Returns whether a stop was cut off and must be finished.
    pub async fn converge(
        self: &Arc<Self>,
        name: &str,
        running: &HashMap<String, Vec<u32>>,
    ) -> bool {
        let Ok(record) = self.registry.get(name) else {
            return false;
        };
        let found = running.get(name).map(Vec::as_slice).unwrap_or_default();
        let keep = if !active(record.state) {
            None
        } else if self.watching(name) {
            record.pid
        } else {
            let pid = record
                .pid
                .filter(|&pid| vmm_procs::is_ours(pid, name, &self.run_dir))
                .or(found.first().copied());
            match pid {
                Some(pid) => {
                    if record.pid != Some(pid) || record.state == SliverState::Starting {
                        self.registry.record_fact(name, |r| {
                            r.pid = Some(pid);
                            if r.state == SliverState::Starting {
                                r.state = SliverState::Running;
                                r.started_at = Some(now_secs());
                            }
                        });
                    }
                    self.adopt(name, pid);
                }
                None => self.record_exit(name, None),
            }
            pid
        };
        for &pid in found.iter().filter(|&&p| Some(p) != keep) {
            log::warn!(
                "sliver {name} is {} but VMM {pid} of it runs: stopping it",
                record.state.as_str()
            );
            self.terminate(name, pid).await;
        }
        // Under the name's lock no stop is under way: one the record still shows was cut off.
        keep.is_some() && record.state == SliverState::Stopping
    }

    /// Stop VMM `pid` of sliver `name`, which nobody should be running (an orphan):
    /// SIGTERM, then SIGKILL after [`STOP_GRACE`], through its pidfd; waits until it is gone.
    pub async fn terminate(&self, name: &str, pid: u32) {
        let Ok(exit) = vmm_procs::ExitWatch::ours(pid, name, &self.run_dir) else {
            return;
        };
        exit.signal(libc::SIGTERM);
        if !exit.wait(STOP_GRACE).await {
            log::warn!("VMM {pid} still running {STOP_GRACE:?} after SIGTERM: SIGKILL");
            exit.signal(libc::SIGKILL);
            exit.wait(STOP_GRACE).await;
        }
    }
}
