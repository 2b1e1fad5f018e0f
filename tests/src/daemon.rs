//! Running `slicevisor node` for tests and benchmarks, and talking to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node_daemon::client::{try_request, Response};
use node_daemon::sliver_cgroups::{daemon_level, Cgroups, Layout};
use serde_json::Value;

use crate::netns::NetNs;
use crate::run::{slicevisor_bin, wait_with_timeout, ChildGuard};

/// Start a node daemon inside `ns`, with socket `dir/node.sock` and state in `dir/state`, plus
/// `extra` flags; returns once it accepts connections. Its output goes to `dir/daemon.log`
/// (see [`daemon_log`]; a file, so a busy daemon never blocks on a full pipe) unless `quiet`,
/// when it is discarded.
pub fn spawn_daemon(ns: &NetNs, dir: &Path, extra: &[&str], quiet: bool) -> (DaemonGuard, PathBuf) {
    spawn_daemon_with_env(ns, dir, extra, quiet, &[])
}

/// [`spawn_daemon`] with environment variables `env` set for the daemon (and its VMMs).
pub fn spawn_daemon_with_env(
    ns: &NetNs,
    dir: &Path,
    extra: &[&str],
    quiet: bool,
    env: &[(&str, &str)],
) -> (DaemonGuard, PathBuf) {
    let socket = dir.join("node.sock");
    let log = dir.join("daemon.log");
    let out = || {
        if quiet {
            Stdio::null()
        } else {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map(Stdio::from)
                .expect("daemon log file")
        }
    };
    let child = ns
        .command_keeping_mounts(slicevisor_bin())
        .args(["node", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(out())
        .stderr(out())
        .spawn()
        .expect("spawning slicevisor node");
    let child = ChildGuard::new(child);
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the daemon did not listen on {} (is {} current?)",
            socket.display(),
            slicevisor_bin().display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let guard = DaemonGuard {
        child: Some(child),
        dir: dir.to_path_buf(),
    };
    (guard, socket)
}

/// A daemon from [`spawn_daemon`]. Dropped with the daemon still in it (at a test's end, or
/// its failure), it kills the daemon, then the VMMs the daemon left and their cgroups
/// ([`kill_vmms_under`], [`tidy_cgroups_of`]).
#[derive(Debug)]
pub struct DaemonGuard {
    child: Option<ChildGuard>,
    dir: PathBuf,
}

impl DaemonGuard {
    /// Hand the daemon over, to be stopped by the caller (who cleans up after it).
    pub fn take(mut self) -> Child {
        self.child.take().expect("daemon already taken").take()
    }
}

impl std::ops::Deref for DaemonGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.child.as_ref().expect("daemon already taken")
    }
}

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            drop(child); // SIGKILL, reaped
            kill_vmms_under(&self.dir);
            tidy_cgroups_of(&self.dir);
        }
    }
}

/// What the daemons started in `dir` without `quiet` wrote, so far.
pub fn daemon_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
}

/// One request on a fresh connection; panics (naming the request) on I/O errors.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    try_request(socket, method, path, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", socket.display()))
}

/// A response's body as JSON, for assertions.
pub trait ResponseExt {
    /// The body as JSON; panics with the body and status if it is not.
    fn json(&self) -> serde_json::Value;
}

impl ResponseExt for Response {
    fn json(&self) -> serde_json::Value {
        self.try_json()
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (status {})", self.body, self.status))
    }
}

/// Now as RFC 3339 (what `slicevisor audit query --at` takes).
pub fn now_rfc3339() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    audit_store::params::format_time(ns)
}

/// The path of `GET /audit?{filters}&at=<now>` (with `at` escaped for a URL).
pub fn audit_now_path(filters: &str) -> String {
    format!("/audit?{filters}&at={}", now_rfc3339().replace('+', "%2B"))
}

/// Flags of a node whose uplink is `up0` (198.51.100.1/24 in the tests), slivers in
/// 10.99.0.0/24, the "site" 203.0.113.0/24 denied, the resolver "outside".
pub const UPLINK_FLAGS: &[&str] = &[
    "--guest-stop-timeout",
    "1",
    "--uplink",
    "up0",
    "--sliver-net",
    "10.99.0.0/24",
    "--deny-dst",
    "203.0.113.0/24",
    "--resolver",
    "198.51.100.2",
];

/// A `slicevisor node` under test, in its own network namespace; a test that fails leaves no
/// VMM of it running.
#[derive(Debug)]
pub struct Daemon {
    /// Dropped with a test that failed before stopping the daemon, the guard leaves nothing
    /// running.
    child: Option<DaemonGuard>,
    /// Its control socket.
    pub socket: PathBuf,
    /// The namespace the daemon (and its TAPs and VMMs) lives in; outlives the daemon.
    pub ns: Arc<NetNs>,
}

/// Kill every process whose arguments mention `dir` (VMMs a failed test left behind: they
/// run in their own process group and outlive the daemon by design).
pub fn kill_vmms_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) && pid != std::process::id() as i32 {
            // SAFETY: SIGKILL to a process of this test (its arguments name our temp dir).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Remove the cgroups the daemon of test directory `dir` made, after [`kill_vmms_under`]
/// ended the VMMs in them: a daemon's exit leaves a running VMM's cgroup (by design), and a
/// killed daemon leaves its whole level, so without this every such test left a
/// `slicevisor/node-*` level behind in each hierarchy. Retried for up to 1 s while the killed
/// processes finish exiting; best effort.
pub fn tidy_cgroups_of(dir: &Path) {
    let Ok(state) = dir.join("state").canonicalize() else {
        return;
    };
    let Ok(layout) = Layout::detect(Path::new("/sys/fs/cgroup")) else {
        return;
    };
    let cgroups = Cgroups::new(layout, daemon_level(&state));
    for _ in 0..50 {
        cgroups.tidy();
        if cgroups.names().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Daemon {
    /// A daemon in a fresh network namespace.
    pub fn start(dir: &Path) -> Self {
        Self::start_in(dir, Arc::new(NetNs::new("svnode")))
    }

    /// A daemon in namespace `ns` (e.g. the previous daemon's, for restarts).
    pub fn start_in(dir: &Path, ns: Arc<NetNs>) -> Self {
        // Tiny guests cannot answer a power-off request: go on to SIGTERM after 1 s.
        Self::start_with(dir, ns, &["--guest-stop-timeout", "1"])
    }

    /// A daemon in namespace `ns` with flags `extra`.
    pub fn start_with(dir: &Path, ns: Arc<NetNs>, extra: &[&str]) -> Self {
        Self::start_with_env(dir, ns, extra, &[])
    }

    /// A daemon in namespace `ns` with flags `extra` and environment variables `env`.
    pub fn start_with_env(
        dir: &Path,
        ns: Arc<NetNs>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let (child, socket) = spawn_daemon_with_env(&ns, dir, extra, false, env);
        Self {
            child: Some(child),
            socket,
            ns,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// One request with a JSON body.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Response {
        let bytes = body.map(|b| b.to_string().into_bytes());
        request(&self.socket, method, path, bytes.as_deref())
    }

    /// SIGTERM, then check the daemon exited 0 and removed its socket; then kill the VMMs it
    /// left running (by design a daemon's exit leaves them; a test leaves none); returns
    /// what the daemons of this directory logged.
    pub fn stop(self) -> String {
        let dir = self.socket.parent().expect("socket dir").to_path_buf();
        let log = self.stop_keeping_vmms();
        kill_vmms_under(&dir);
        tidy_cgroups_of(&dir);
        log
    }

    /// [`Daemon::stop`], leaving its VMMs running (for a restart that adopts them).
    pub fn stop_keeping_vmms(mut self) -> String {
        let child = self.child.take().expect("running").take();
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let out = wait_with_timeout(child, Duration::from_secs(20));
        assert_eq!(out.code(), 0, "{out:?}");
        assert!(!self.socket.exists(), "socket left behind");
        daemon_log(self.socket.parent().expect("socket dir"))
    }

    /// SIGKILL the daemon (its VMMs run on, by design); returns its namespace for a restart.
    pub fn kill(mut self) -> Arc<NetNs> {
        let child = self.child.take().expect("running").take();
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = wait_with_timeout(child, Duration::from_secs(20));
        self.ns.clone()
    }
}

/// Poll sliver `name` until it is in `state` (at most 60 s); returns its view.
pub fn wait_for_state(d: &Daemon, name: &str, state: &str) -> Value {
    let start = Instant::now();
    loop {
        let s = d.call("GET", &format!("/slivers/{name}"), None).json();
        if s["state"] == state {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} never became {state}: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether process `pid` exists and has not exited (a zombie waiting for its parent to reap
/// it has exited).
pub fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name, which is in parentheses.
        stat.rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X')
    })
}

/// What a daemon's host side looks like, read from the host itself (with its own tools and
/// rules, not the daemon's): for the convergence tests to compare with the daemon's records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostState {
    /// Every TUN/TAP link in the daemon's namespace, with its IPv4 addresses (`a.b.c.d/len`).
    pub taps: std::collections::BTreeMap<String, Vec<String>>,
    /// Names holding a shaper ledger slot.
    pub slots: std::collections::BTreeSet<String>,
    /// The daemon's VMM processes (`slicevisor run` with an exit file in its `run/`), by
    /// sliver name.
    pub vmms: std::collections::BTreeMap<String, Vec<u32>>,
}

/// The value after `flag` in a NUL-separated argument list.
fn arg_after<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.windows(2).find(|w| w[0] == flag).map(|w| w[1])
}

/// The host side of the daemon with state directory `state`, in namespace `ns`.
pub fn host_state(ns: &NetNs, state: &Path) -> HostState {
    let ip = |args: &[&str]| -> Value {
        let out = ns.command("ip").args(args).output().expect("ip");
        assert!(out.status.success(), "ip {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("ip -j output")
    };
    let mut taps = std::collections::BTreeMap::new();
    for link in ip(&["-d", "-j", "link", "show"])
        .as_array()
        .into_iter()
        .flatten()
    {
        if link["linkinfo"]["info_kind"] == "tun" {
            let name = link["ifname"].as_str().unwrap_or_default().to_string();
            taps.insert(name, Vec::new());
        }
    }
    for link in ip(&["-j", "-4", "addr", "show"])
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = link["ifname"].as_str().unwrap_or_default();
        if let Some(addrs) = taps.get_mut(name) {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                addrs.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                ));
            }
        }
    }
    let slots = match vmm::ledger::Ledger::open(&state.join("shaper.ledger")) {
        Ok(ledger) => ledger
            .slots()
            .filter(|(_, s)| s.is_used())
            .map(|(_, s)| s.name())
            .collect(),
        Err(_) => Default::default(),
    };
    let run_dir = format!("{}/", state.join("run").display());
    let mut vmms: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let text = String::from_utf8_lossy(&raw);
        let args: Vec<&str> = text.split('\0').collect();
        let ours = args.contains(&"run")
            && arg_after(&args, "--exit-file").is_some_and(|f| f.starts_with(&run_dir));
        if let (true, Some(name)) = (ours, arg_after(&args, "--sliver")) {
            vmms.entry(name.to_string()).or_default().push(pid);
        }
    }
    // A jailed VMM is its keeper and the keeper's child: count the keeper.
    for pids in vmms.values_mut() {
        let all = pids.clone();
        pids.retain(|p| node_daemon::vmm_procs::parent_of(*p).is_none_or(|pp| !all.contains(&pp)));
    }
    HostState { taps, slots, vmms }
}
