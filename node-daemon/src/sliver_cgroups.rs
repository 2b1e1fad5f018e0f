//! A cgroup per sliver, beneath the daemon's own (never above it, never moving anything but
//! the sliver's VMM): CPU weight, cap and cores, memory limit (guest RAM plus a VMM
//! allowance), a pids limit, and the accounting the API shows. Both layouts are written
//! through their files (`Documentation/admin-guide/cgroup-v2.rst`; v1's `cgroup-v1/`
//! `cpu`, `cpuacct`, `cpuset`, `memory`, `pids`): cgroup v2 when its mount holds the `cpu`
//! and `memory` controllers, else the v1 hierarchies mounted under `/sys/fs/cgroup/<name>`.
//! Each sliver's directory is `<the daemon's cgroup>/slicevisor/<daemon>/<sliver>` in every
//! hierarchy, where `<daemon>` names the daemon by its state directory (`node-` and 8 hex
//! digits), so that two daemons in one cgroup (tests) never share a sliver's cgroup.
//! Each sliver's CPU weight is the node's to choose ([`Cgroups::set_weights`]: its share's,
//! or more for a `cpu_pct` guarantee, `crate::cpu_guarantee`).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// The parent of the slivers' cgroups in each hierarchy, below the daemon's own.
pub const PARENT: &str = "slicevisor";
/// What a VMM may use beyond its guest's RAM (its own heap, the capture ring, page tables).
pub const VMM_ALLOWANCE_BYTES: u64 = 256 << 20;
/// Most tasks (threads) a VMM may have.
pub const PIDS_MAX: u64 = 512;
/// The CFS period caps are expressed in, µs.
const PERIOD_US: u64 = 100_000;

/// Errors of the cgroup set-up; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// No usable hierarchy.
    #[error("cgroups: {0}")]
    Unavailable(String),
    /// A file could not be written or read.
    #[error("cgroups: {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a sliver's cgroup enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Weight (PlanetLab's `cpu_share`; 1 is the default sliver's): the CPU weight written
    /// when [`Cgroups::set_weights`] has given the sliver none.
    pub cpu_share: u32,
    /// Cap, percent of one CPU.
    pub cpu_max_pct: Option<u32>,
    /// CPUs it may run on (cpuset list, e.g. `0-1,3`); all of the daemon's when absent.
    pub cpu_cores: Option<String>,
    /// Memory limit, bytes.
    pub memory_bytes: u64,
}

/// A sliver's accounting, as `GET /slivers/{name}` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CgroupStats {
    /// CPU time, ns.
    pub cpu_ns: u64,
    /// Of which in user mode, ns (v1: from USER_HZ ticks).
    pub cpu_user_ns: u64,
    /// Of which in the kernel, ns.
    pub cpu_system_ns: u64,
    /// Time held back by the cap, ns.
    pub cpu_throttled_ns: u64,
    /// Memory charged now, bytes.
    pub memory_bytes: u64,
    /// Most memory charged, bytes.
    pub memory_peak_bytes: u64,
    /// The CPU weight it has now, in the layout's unit ([`Layout::weight_unit`]: v1
    /// `cpu.shares`, 1024 per share; v2 `cpu.weight`, 100 per share): its `cpu_share`'s, or
    /// more for a `cpu_pct` guarantee; 0 when it cannot be read.
    pub cpu_weight: u64,
}

/// How a layout writes CPU weights: so much per share, within the kernel's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightUnit {
    /// The weight of one share (the kernel's default weight).
    pub per_share: u64,
    /// The kernel's least weight.
    pub min: u64,
    /// The kernel's largest weight.
    pub max: u64,
}

/// v1 `cpu.shares`: 1024 per share, 2..=262144.
pub const V1_SHARES: WeightUnit = WeightUnit {
    per_share: 1024,
    min: 2,
    max: 262_144,
};

/// v2 `cpu.weight`: 100 per share, 1..=10000.
pub const V2_WEIGHT: WeightUnit = WeightUnit {
    per_share: 100,
    min: 1,
    max: 10_000,
};

impl WeightUnit {
    /// The weight of `cpu_share` shares, within the kernel's bounds.
    pub fn of_share(self, cpu_share: u32) -> u64 {
        (u64::from(cpu_share) * self.per_share).clamp(self.min, self.max)
    }
}

/// Where the daemon's cgroups are: the hierarchies, and this daemon's level below them; and
/// the CPU weights the node last gave its slivers.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// The hierarchies.
    pub layout: Layout,
    /// This daemon's level under [`PARENT`].
    pub daemon: String,
    /// The CPU weights [`Cgroups::set_weights`] gave; its lock also makes each
    /// [`Cgroups::set_weights`] one step.
    weights: Arc<Mutex<WeightTable>>,
}

/// What [`Cgroups::set_weights`] gave and could not write.
#[derive(Debug, Default)]
struct WeightTable {
    /// Per sliver, the CPU weight last given, in the layout's unit ([`Cgroups::apply`]
    /// writes it to a cgroup it makes later).
    given: BTreeMap<String, u64>,
    /// Slivers whose weight a write failed to reach: written again next time, changed or
    /// not.
    unwritten: BTreeSet<String>,
}

/// The name of the daemon whose state directory is `state_dir`, for [`Cgroups::daemon`].
pub fn daemon_level(state_dir: &Path) -> String {
    let hash = state_dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0x811c_9dc5u32, |h, b| {
            (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
        });
    format!("node-{hash:08x}")
}

/// The hierarchies the daemon's cgroups are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v2: the daemon's cgroup directory.
    V2(PathBuf),
    /// cgroup v1: the daemon's cgroup directory in the `cpu`, `cpuacct`, `cpuset`, `memory`
    /// and `pids` hierarchies.
    V1 {
        /// `cpu`.
        cpu: PathBuf,
        /// `cpuacct`.
        cpuacct: PathBuf,
        /// `cpuset`.
        cpuset: PathBuf,
        /// `memory`.
        memory: PathBuf,
        /// `pids`.
        pids: PathBuf,
    },
}

/// The daemon's cgroup path in hierarchy `controller` (`""` for v2), from
/// `/proc/self/cgroup` (`ID:CONTROLLERS:PATH` lines).
fn own_path(proc_cgroup: &str, controller: &str) -> Option<String> {
    proc_cgroup.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.trim_start_matches('/').to_string())
    })
}

impl Layout {
    /// How this layout writes CPU weights.
    pub fn weight_unit(&self) -> WeightUnit {
        match self {
            Self::V2(_) => V2_WEIGHT,
            Self::V1 { .. } => V1_SHARES,
        }
    }

    /// Find the daemon's cgroups under `root` (normally `/sys/fs/cgroup`).
    ///
    /// # Errors
    /// Neither a v2 mount with `cpu` and `memory` nor the five v1 hierarchies.
    pub fn detect(root: &Path) -> Result<Self, CgroupError> {
        let proc_cgroup = fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| CgroupError::Unavailable(format!("/proc/self/cgroup: {e}")))?;
        let v2_controllers =
            fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let has = |c: &str| v2_controllers.split_whitespace().any(|x| x == c);
        if has("cpu") && has("memory") {
            let own = own_path(&proc_cgroup, "").ok_or_else(|| {
                CgroupError::Unavailable("no v2 line in /proc/self/cgroup".into())
            })?;
            return Ok(Self::V2(root.join(own)));
        }
        let dir = |c: &str| -> Result<PathBuf, CgroupError> {
            let own = own_path(&proc_cgroup, c).ok_or_else(|| {
                CgroupError::Unavailable(format!("no {c} hierarchy in /proc/self/cgroup"))
            })?;
            let mount = root.join(c);
            if !mount.is_dir() {
                return Err(CgroupError::Unavailable(format!(
                    "{} is not mounted",
                    mount.display()
                )));
            }
            Ok(mount.join(own))
        };
        Ok(Self::V1 {
            cpu: dir("cpu")?,
            cpuacct: dir("cpuacct")?,
            cpuset: dir("cpuset")?,
            memory: dir("memory")?,
            pids: dir("pids")?,
        })
    }
}

impl Cgroups {
    /// The daemon's cgroups in `layout`, at level `daemon` (see [`daemon_level`]); no sliver
    /// has been given a weight yet.
    pub fn new(layout: Layout, daemon: String) -> Self {
        Self {
            layout,
            daemon,
            weights: Arc::default(),
        }
    }

    /// Make the slivers' parent cgroup in every hierarchy (at start-up: a daemon that cannot
    /// finds out then, not at a sliver's start).
    ///
    /// # Errors
    /// A directory cannot be made or set up.
    pub fn check(&self) -> Result<(), CgroupError> {
        for parent in self.parents() {
            if let Some(top) = parent.parent() {
                mkdir(top)?;
            }
            mkdir(&parent)?;
        }
        match &self.layout {
            Layout::V2(own) => {
                // Each level hands the controllers to its children (it holds no process).
                for level in [own.join(PARENT), own.join(PARENT).join(&self.daemon)] {
                    write(
                        &level.join("cgroup.subtree_control"),
                        "+cpu +cpuset +memory +pids",
                    )?;
                }
                Ok(())
            }
            Layout::V1 { cpuset, .. } => {
                // A v1 cpuset starts with no CPUs and no memory nodes: each level copies its
                // parent's (a task cannot join an empty one).
                let daemon = cpuset.join(PARENT).join(&self.daemon);
                copy_cpuset(cpuset, &cpuset.join(PARENT))?;
                copy_cpuset(&cpuset.join(PARENT), &daemon)?;
                // The slivers' cpusets are born with the daemon level's CPUs and memory
                // nodes (cgroup-v1 `cgroups.rst`, "What does clone_children do?"), instead of
                // copying them with two writes per start (~0.13 ms on the test hosts).
                write(&daemon.join("cgroup.clone_children"), "1")
            }
        }
    }

    /// Every directory of sliver `name` (one per hierarchy).
    pub fn dirs(&self, name: &str) -> Vec<PathBuf> {
        self.parents().into_iter().map(|p| p.join(name)).collect()
    }

    /// The files a single-threaded process writes `0` to, one per hierarchy, to join sliver
    /// `name`'s cgroup itself (a child between fork and exec). v1: `tasks`, which moves the
    /// writing thread, i.e. the whole process while it has one thread, without the kernel's
    /// global thread-group lock that a `cgroup.procs` write takes (its RCU grace period made
    /// each join ~7 ms on the test hosts; cgroup-v1 `cgroups.txt` §2.1: "echo 0 > tasks"
    /// attaches the writer). v2: `cgroup.procs` (there is no `tasks`; cgroup-v2.rst).
    fn join_files(&self, name: &str) -> Vec<PathBuf> {
        let file = match self.layout {
            Layout::V2(_) => "cgroup.procs",
            Layout::V1 { .. } => "tasks",
        };
        self.dirs(name).into_iter().map(|d| d.join(file)).collect()
    }

    /// How a child joins sliver `name`'s cgroup itself: made before the fork, its
    /// [`Joiner::join_self`] called in the child before exec.
    pub fn joiner(&self, name: &str) -> Joiner {
        Joiner(
            self.join_files(name)
                .into_iter()
                .filter_map(|f| CString::new(f.into_os_string().into_vec()).ok())
                .collect(),
        )
    }

    /// The processes in sliver `name`'s cgroup (its first hierarchy's `cgroup.procs`, pids
    /// as the daemon sees them); none if it has no cgroup.
    pub fn procs(&self, name: &str) -> Vec<u32> {
        self.dirs(name)
            .first()
            .and_then(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn parents(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2(own) => vec![own.join(PARENT).join(&self.daemon)],
            Layout::V1 {
                cpu,
                cpuacct,
                cpuset,
                memory,
                pids,
            } => [cpu, cpuacct, cpuset, memory, pids]
                .into_iter()
                .map(|d| d.join(PARENT).join(&self.daemon))
                .collect(),
        }
    }

    /// Make sliver `name`'s cgroup (and the parent) if missing, with `limits`; its CPU weight
    /// is the one [`Cgroups::set_weights`] last gave it, else `limits.cpu_share`'s.
    ///
    /// # Errors
    /// A directory or file could not be made or written.
    pub fn apply(&self, name: &str, limits: &CgroupLimits) -> Result<(), CgroupError> {
        match &self.layout {
            Layout::V2(own) => {
                let parent = own.join(PARENT).join(&self.daemon);
                mkdir(&parent)?;
                // Children get the controllers (the parent holds no process of its own).
                write(
                    &parent.join("cgroup.subtree_control"),
                    "+cpu +cpuset +memory +pids",
                )?;
                let dir = parent.join(name);
                mkdir(&dir)?;
                self.write_weight(&dir.join("cpu.weight"), name, limits.cpu_share)?;
                write(
                    &dir.join("cpu.max"),
                    &match limits.cpu_max_pct {
                        Some(pct) => format!("{} {PERIOD_US}", quota_us(pct)),
                        None => format!("max {PERIOD_US}"),
                    },
                )?;
                write(
                    &dir.join("cpuset.cpus"),
                    limits.cpu_cores.as_deref().unwrap_or(""),
                )?;
                write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                write(&dir.join("pids.max"), &PIDS_MAX.to_string())
            }
            Layout::V1 {
                cpu,
                cpuacct,
                cpuset,
                memory,
                pids,
            } => {
                self.check()?;
                for parent in [cpu, cpuacct, memory, pids] {
                    mkdir(&parent.join(PARENT).join(&self.daemon).join(name))?;
                }
                let set_parent = cpuset.join(PARENT).join(&self.daemon);
                let set = set_parent.join(name);
                mkdir(&set)?;
                copy_cpuset(&set_parent, &set)?;
                if let Some(cores) = &limits.cpu_cores {
                    write(&set.join("cpuset.cpus"), cores)?;
                }
                let cpu_dir = cpu.join(PARENT).join(&self.daemon).join(name);
                self.write_weight(&cpu_dir.join("cpu.shares"), name, limits.cpu_share)?;
                write(&cpu_dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                write(
                    &cpu_dir.join("cpu.cfs_quota_us"),
                    &limits
                        .cpu_max_pct
                        .map_or("-1".into(), |p| quota_us(p).to_string()),
                )?;
                write(
                    &memory
                        .join(PARENT)
                        .join(&self.daemon)
                        .join(name)
                        .join("memory.limit_in_bytes"),
                    &limits.memory_bytes.to_string(),
                )?;
                write(
                    &pids
                        .join(PARENT)
                        .join(&self.daemon)
                        .join(name)
                        .join("pids.max"),
                    &PIDS_MAX.to_string(),
                )
            }
        }
    }

    /// Write to `file` the CPU weight sliver `name` is to have: what
    /// [`Cgroups::set_weights`] last gave it, else `cpu_share`'s, in the layout's unit. The
    /// table stays locked until the file is written, so a [`Cgroups::set_weights`] running
    /// meanwhile writes its weight after this one, never before.
    fn write_weight(&self, file: &Path, name: &str, cpu_share: u32) -> Result<(), CgroupError> {
        let table = self.lock_weights();
        let weight = table
            .given
            .get(name)
            .copied()
            .unwrap_or_else(|| self.layout.weight_unit().of_share(cpu_share));
        write(file, &weight.to_string())
    }

    fn lock_weights(&self) -> MutexGuard<'_, WeightTable> {
        self.weights.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The file of sliver `name`'s CPU weight (v1 `cpu.shares`, v2 `cpu.weight`).
    fn weight_file(&self, name: &str) -> PathBuf {
        match &self.layout {
            Layout::V2(own) => own
                .join(PARENT)
                .join(&self.daemon)
                .join(name)
                .join("cpu.weight"),
            Layout::V1 { cpu, .. } => cpu
                .join(PARENT)
                .join(&self.daemon)
                .join(name)
                .join("cpu.shares"),
        }
    }

    /// Give the node's slivers their CPU weights: `weights` answers `(name, weight)` for
    /// every sliver, in the unit it is handed ([`Layout::weight_unit`]), and is asked under
    /// this table's lock, so that of two callers the later answer is the one written last.
    /// The weights are kept for the cgroups [`Cgroups::apply`] makes later (a sliver left
    /// out gets its share's) and written now to the slivers' cgroups that exist, when they
    /// changed since the last call or their write failed then: a sliver's start writes its
    /// own weight, not every sliver's (each write of `cpu.shares` was ~15 µs here, two
    /// rounds per sliver created).
    ///
    /// # Errors
    /// A weight file could not be written (a cgroup removed meanwhile is no error): the
    /// others are still written, the first error is returned.
    pub fn set_weights(
        &self,
        weights: impl FnOnce(WeightUnit) -> Vec<(String, u64)>,
    ) -> Result<(), CgroupError> {
        let mut table = self.lock_weights();
        let unit = self.layout.weight_unit();
        let given: BTreeMap<String, u64> = weights(unit)
            .into_iter()
            .map(|(name, w)| (name, w.clamp(unit.min, unit.max)))
            .collect();
        let before = std::mem::replace(&mut table.given, given);
        let retry = std::mem::take(&mut table.unwritten);
        let mut unwritten = BTreeSet::new();
        let mut first = Ok(());
        for (name, weight) in &table.given {
            let unchanged = before.get(name) == Some(weight) && !retry.contains(name);
            if unchanged || !self.exists(name) {
                continue;
            }
            let path = self.weight_file(name);
            match fs::write(&path, weight.to_string()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    unwritten.insert(name.clone());
                    if first.is_ok() {
                        first = Err(CgroupError::Io { path, source });
                    }
                }
            }
        }
        table.unwritten = unwritten;
        first
    }

    /// Whether sliver `name` has a cgroup (it has been started).
    pub fn exists(&self, name: &str) -> bool {
        self.dirs(name).first().is_some_and(|d| d.is_dir())
    }

    /// Remove sliver `name`'s cgroup (once no process is left in it); a failure is logged.
    pub fn remove(&self, name: &str) {
        self.reclaim_memory(name);
        for dir in self.dirs(name) {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cgroups: removing {}: {e}", dir.display()),
            }
        }
    }

    /// At a clean exit: remove the cgroups no process is in (a VMM that runs on keeps its),
    /// then this daemon's level if that left it empty. Nothing is logged: busy ones stay.
    pub fn tidy(&self) {
        for name in self.names() {
            self.reclaim_memory(&name);
            for dir in self.dirs(&name) {
                let _ = fs::remove_dir(dir);
            }
        }
        for parent in self.parents() {
            let _ = fs::remove_dir(parent);
        }
    }

    /// Before sliver `name`'s cgroup is removed, if no process is left in it: reclaim the
    /// memory still charged to it (the page cache of its logs and capture ring). A removed
    /// memory cgroup with pages charged stays behind, dying, until they are reclaimed, and
    /// every memory cgroup operation on the node slows with their number (with ~880 of them
    /// on the test host, a sliver's start took twice as long; docs/benchmarks.md). v1:
    /// `memory.force_empty` (cgroup-v1 `memory.rst`, 5.1); v2: `memory.reclaim` of what
    /// `memory.current` says (cgroup-v2.rst). Best effort: a failure leaves a dying cgroup.
    fn reclaim_memory(&self, name: &str) {
        let (dir, file) = match &self.layout {
            Layout::V1 { memory, .. } => (
                memory.join(PARENT).join(&self.daemon).join(name),
                "memory.force_empty",
            ),
            Layout::V2(own) => (
                own.join(PARENT).join(&self.daemon).join(name),
                "memory.reclaim",
            ),
        };
        let procs = fs::read_to_string(dir.join("cgroup.procs"));
        if !procs.is_ok_and(|p| p.trim().is_empty()) {
            return;
        }
        let amount = match self.layout {
            Layout::V1 { .. } => "0".to_string(),
            Layout::V2(_) => match fs::read_to_string(dir.join("memory.current")) {
                Ok(current) if current.trim() != "0" => current.trim().to_string(),
                _ => return,
            },
        };
        // Never creates the file: outside a cgroup file system it is simply absent.
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(dir.join(file)) {
            let _ = io::Write::write_all(&mut f, amount.as_bytes());
        }
    }

    /// The names of the slivers that have a cgroup.
    pub fn names(&self) -> Vec<String> {
        let Some(parent) = self.parents().into_iter().next() else {
            return Vec::new();
        };
        fs::read_dir(parent)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect()
    }

    /// Sliver `name`'s accounting (zeros for what cannot be read).
    pub fn stats(&self, name: &str) -> CgroupStats {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        let num = |p: PathBuf| read(p).trim().parse::<u64>().unwrap_or(0);
        match &self.layout {
            Layout::V2(own) => {
                let dir = own.join(PARENT).join(&self.daemon).join(name);
                let cpu = read(dir.join("cpu.stat"));
                let us = |k: &str| keyed(&cpu, k) * 1000;
                CgroupStats {
                    cpu_ns: us("usage_usec"),
                    cpu_user_ns: us("user_usec"),
                    cpu_system_ns: us("system_usec"),
                    cpu_throttled_ns: us("throttled_usec"),
                    memory_bytes: num(dir.join("memory.current")),
                    memory_peak_bytes: num(dir.join("memory.peak")),
                    cpu_weight: num(self.weight_file(name)),
                }
            }
            Layout::V1 {
                cpu,
                cpuacct,
                memory,
                ..
            } => {
                let acct = cpuacct.join(PARENT).join(&self.daemon).join(name);
                let ticks = read(acct.join("cpuacct.stat"));
                let tick_ns = 1_000_000_000 / user_hz();
                let mem = memory.join(PARENT).join(&self.daemon).join(name);
                CgroupStats {
                    cpu_ns: num(acct.join("cpuacct.usage")),
                    cpu_user_ns: keyed(&ticks, "user") * tick_ns,
                    cpu_system_ns: keyed(&ticks, "system") * tick_ns,
                    cpu_throttled_ns: keyed(
                        &read(
                            cpu.join(PARENT)
                                .join(&self.daemon)
                                .join(name)
                                .join("cpu.stat"),
                        ),
                        "throttled_time",
                    ),
                    memory_bytes: num(mem.join("memory.usage_in_bytes")),
                    memory_peak_bytes: num(mem.join("memory.max_usage_in_bytes")),
                    cpu_weight: num(self.weight_file(name)),
                }
            }
        }
    }
}

/// `key value` lines (`cpu.stat`, `cpuacct.stat`): the value of `key`, or 0.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == key).then(|| v.trim().parse().ok()).flatten()
        })
        .unwrap_or(0)
}

fn user_hz() -> u64 {
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&h| h > 0).unwrap_or(100)
}

/// v1 `cpu.shares` of a weight: 1024 per share (the kernel's default is one share), within
/// the kernel's 2..=262144.
pub fn v1_shares(cpu_share: u32) -> u64 {
    V1_SHARES.of_share(cpu_share)
}

/// v2 `cpu.weight` of a weight: 100 per share (the default weight is 100), within 1..=10000.
pub fn v2_weight(cpu_share: u32) -> u64 {
    V2_WEIGHT.of_share(cpu_share)
}

/// The CFS quota of a cap of `pct` percent of one CPU, per [`PERIOD_US`].
fn quota_us(pct: u32) -> u64 {
    PERIOD_US * u64::from(pct) / 100
}

fn mkdir(dir: &Path) -> Result<(), CgroupError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(CgroupError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_err(path))
}

fn copy_cpuset(from: &Path, to: &Path) -> Result<(), CgroupError> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let mine = fs::read_to_string(to.join(file)).unwrap_or_default();
        if mine.trim().is_empty() {
            let theirs = fs::read_to_string(from.join(file)).map_err(io_err(&from.join(file)))?;
            write(&to.join(file), theirs.trim())?;
        }
    }
    Ok(())
}

/// The CPUs of a cpuset list (`0-2,5`), or `None` if it does not parse.
pub fn parse_cpu_list(list: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if a > b || b - a > 4096 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The files a process writes `0` to to join one sliver's cgroup ([`Cgroups::joiner`]).
#[derive(Debug, Clone)]
pub struct Joiner(Vec<CString>);

impl Joiner {
    /// Move the calling process (one thread: a child between fork and exec) into the
    /// cgroup. Calls only async-signal-safe functions (open, write, close) and allocates
    /// nothing, so it may run in a `pre_exec` closure.
    ///
    /// # Errors
    /// The first file that could not be opened or written.
    pub fn join_self(&self) -> io::Result<()> {
        for path in &self.0 {
            // SAFETY: `path` is a NUL-terminated string owned by `self`; the fd is closed below.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // "0": the writer itself (cgroup-v2.rst, cgroup.procs; v1 cgroups.txt, tasks).
            // SAFETY: writes one byte from a static buffer to the fd opened above.
            let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            let err = io::Error::last_os_error();
            // SAFETY: closes the fd opened above, once.
            unsafe { libc::close(fd) };
            if written != 1 {
                return Err(err);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemons_own_cgroup_is_read_per_hierarchy() {
        let text = "9:name=systemd:/\n4:memory:/process_api/abc\n2:cpu,cpuacct:/x\n0::/y/z\n";
        assert_eq!(own_path(text, "memory").as_deref(), Some("process_api/abc"));
        assert_eq!(own_path(text, "cpuacct").as_deref(), Some("x"));
        assert_eq!(own_path(text, "").as_deref(), Some("y/z"));
        assert_eq!(own_path(text, "pids"), None);
    }

    #[test]
    fn weights_caps_and_cpu_lists() {
        assert_eq!(
            (v1_shares(1), v1_shares(3), v1_shares(1000)),
            (1024, 3072, 262_144)
        );
        assert_eq!(
            (v2_weight(1), v2_weight(3), v2_weight(1000)),
            (100, 300, 10_000)
        );
        assert_eq!(quota_us(25), 25_000);
        assert_eq!(parse_cpu_list("0-2,5"), Some(vec![0, 1, 2, 5]));
        assert_eq!(parse_cpu_list("1"), Some(vec![1]));
        for bad in ["", "a", "3-1", "1,,2", "-1"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
        assert_eq!(keyed("user 12\nsystem 3\n", "system"), 3);
        assert_eq!(keyed("usage_usec 5", "user_usec"), 0);
    }

    #[test]
    fn a_removed_cgroup_s_memory_is_reclaimed_only_once_no_process_is_left() {
        let root = tempfile::tempdir().expect("tmp");
        let hierarchy = |h: &str| root.path().join(h);
        let layout = Layout::V1 {
            cpu: hierarchy("cpu"),
            cpuacct: hierarchy("cpuacct"),
            cpuset: hierarchy("cpuset"),
            memory: hierarchy("memory"),
            pids: hierarchy("pids"),
        };
        let c = Cgroups::new(layout, "node-x".into());
        let memory = hierarchy("memory").join(PARENT).join("node-x");
        for (name, procs) in [("idle", ""), ("busy", "4242\n"), ("bare", "")] {
            fs::create_dir_all(memory.join(name)).expect("dir");
            fs::write(memory.join(name).join("cgroup.procs"), procs).expect("procs");
            if name != "bare" {
                fs::write(memory.join(name).join("memory.force_empty"), "").expect("file");
            }
            c.remove(name);
        }
        let written = |name: &str| fs::read_to_string(memory.join(name).join("memory.force_empty"));
        assert_eq!(written("idle").expect("idle"), "0", "reclaimed");
        assert_eq!(
            written("busy").expect("busy"),
            "",
            "a process is still in it"
        );
        assert!(written("bare").is_err(), "no file is made");
    }

    /// A sliver's limits with CPU share `cpu_share` and 1 GiB of memory.
    fn share_limits(cpu_share: u32) -> CgroupLimits {
        CgroupLimits {
            cpu_share,
            cpu_max_pct: None,
            cpu_cores: None,
            memory_bytes: 1 << 30,
        }
    }

    #[test]
    fn weights_given_are_written_and_kept_for_cgroups_made_later() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = Cgroups::new(Layout::V2(dir.path().to_path_buf()), "node-x".into());
        let weight = |name: &str| {
            fs::read_to_string(c.dirs(name)[0].join("cpu.weight")).expect("cpu.weight")
        };
        let limits = share_limits(2);
        c.check().expect("the daemon's level");
        c.apply("a", &limits).expect("apply");
        assert_eq!(weight("a"), "200");
        c.set_weights(|unit| {
            assert_eq!(unit, V2_WEIGHT);
            vec![("a".into(), 900), ("b".into(), 50_000)]
        })
        .expect("set");
        assert_eq!(weight("a"), "900");
        assert!(!c.exists("b"), "no cgroup is made for a weight");
        c.apply("b", &limits).expect("apply");
        assert_eq!(weight("b"), "10000", "within the kernel's bounds");
        c.apply("a", &limits).expect("apply again");
        assert_eq!(weight("a"), "900");
        assert_eq!(c.stats("a").cpu_weight, 900);
        c.set_weights(|_| Vec::new()).expect("none");
        c.apply("a", &limits).expect("apply");
        assert_eq!(weight("a"), "200", "its share's once no weight is given");
    }

    #[test]
    fn only_changed_or_unwritten_weights_are_written_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = Cgroups::new(Layout::V2(dir.path().to_path_buf()), "node-x".into());
        let file = |name: &str| c.dirs(name)[0].join("cpu.weight");
        let limits = share_limits(1);
        c.check().expect("the daemon's level");
        c.apply("a", &limits).expect("apply");
        c.apply("b", &limits).expect("apply");
        let both = |a: u64, b: u64| move |_| vec![("a".into(), a), ("b".into(), b)];
        c.set_weights(both(300, 400)).expect("set");
        // A marker in a's file shows whether it is written again.
        fs::write(file("a"), "marker").expect("mark");
        c.set_weights(both(300, 500)).expect("set");
        assert_eq!(fs::read_to_string(file("a")).expect("read"), "marker");
        assert_eq!(fs::read_to_string(file("b")).expect("read"), "500");
        // A write that fails is tried again next time, though the weight did not change.
        fs::remove_file(file("b")).expect("rm");
        fs::create_dir(file("b")).expect("a directory where the file was");
        assert!(c.set_weights(both(300, 600)).is_err());
        fs::remove_dir(file("b")).expect("rmdir");
        fs::write(file("b"), "stale").expect("file again");
        c.set_weights(both(300, 600)).expect("set");
        assert_eq!(fs::read_to_string(file("b")).expect("read"), "600");
        assert_eq!(fs::read_to_string(file("a")).expect("read"), "marker");
    }
}
