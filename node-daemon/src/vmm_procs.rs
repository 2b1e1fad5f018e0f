//! Finding, watching and signalling the node's VMM processes. A process is one of this
//! daemon's VMMs when its arguments are `... run ... --sliver NAME ... --exit-file
//! RUN_DIR/NAME/exit.json`, with `RUN_DIR` this daemon's: so two daemons with different state
//! directories never touch each other's VMMs, and one found after a restart is known by name.
//! A jailed VMM is two processes with those arguments: the keeper the daemon started, and the
//! VMM proper, its child in a PID namespace of its own (`vmm::jail`); the keeper stands for
//! both.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// Send `sig` to `pid` (a stale pid at worst gets ESRCH).
pub fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes a pid and a signal number and touches no memory of ours.
    unsafe { libc::kill(pid, sig) };
}

/// A pidfd for `pid` (pidfd_open(2)): readable once the process has exited.
fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::last_os_error())?;
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A watch on one process's exit (its pidfd on the async runtime). The pidfd pins the
/// process: a signal sent through it cannot reach another process that reused the pid.
#[derive(Debug)]
pub struct ExitWatch(tokio::io::unix::AsyncFd<OwnedFd>);

impl ExitWatch {
    /// Watch process `pid` if it is this daemon's VMM for sliver `name` (checked after the
    /// pidfd is open, so the check is about the pinned process).
    pub fn ours(pid: u32, name: &str, run_dir: &Path) -> std::io::Result<Self> {
        let watch = Self::new(pid)?;
        if !is_ours(pid, name, run_dir) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("pid {pid} is not the VMM of {name}"),
            ));
        }
        Ok(watch)
    }

    /// Send `sig` to the watched process (pidfd_send_signal(2)); a process that has exited
    /// meanwhile gets nothing.
    pub fn signal(&self, sig: libc::c_int) {
        use std::os::fd::AsRawFd;
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: pidfd_send_signal(2) on a pidfd we own, with no siginfo (NULL) and no flags.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                sig,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }

    /// Watch process `pid`; fails if it is gone already.
    fn new(pid: u32) -> std::io::Result<Self> {
        let fd = pidfd_open(pid)?;
        // SAFETY: the OwnedFd moves into the AsyncFd, so it stays open, and is this pidfd,
        // for the registration's whole life; nothing else can close it.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
        };
        registered.map(Self).map_err(|e| e.into_parts().1)
    }

    /// Wait until the process has exited, or `limit` has passed; true if it exited.
    pub async fn wait(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.0.readable()).await.is_ok()
    }

    /// Wait until the process has exited.
    pub async fn exited(&self) {
        let _ = self.0.readable().await;
    }
}

/// Where the VMM of sliver `name` writes its exit record, in the run directory `run_dir`.
pub fn exit_file(run_dir: &Path, name: &str) -> std::path::PathBuf {
    run_dir.join(name).join("exit.json")
}

/// The parent of process `pid` (field 4 of `/proc/PID/stat`, after the parenthesised name).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The sliver a VMM's argument list (`/proc/PID/cmdline`) runs, if it is one of ours.
fn sliver_of(cmdline: &[u8], run_dir: &Path) -> Option<String> {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let value = |flag: &[u8]| {
        args.windows(2)
            .find(|w| w[0] == flag)
            .map(|w| String::from_utf8_lossy(w[1]).into_owned())
    };
    let name = value(b"--sliver")?;
    let given = value(b"--exit-file")?;
    let ours = args.contains(&b"run".as_slice()) && Path::new(&given) == exit_file(run_dir, &name);
    ours.then_some(name)
}

/// Whether `pid` is this daemon's VMM for sliver `name`.
pub fn is_ours(pid: u32, name: &str, run_dir: &Path) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| sliver_of(&c, run_dir))
        .is_some_and(|n| n == name)
}

/// This daemon's VMMs running now, by sliver name (more than one for a name is an accident
/// the convergence repairs), lowest pid first.
pub fn scan(run_dir: &Path) -> HashMap<String, Vec<u32>> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    scan_among(
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok()),
        run_dir,
    )
}

/// [`scan`] over the processes `pids` only (e.g. one sliver's cgroup, where its VMM runs):
/// one `/proc/PID/cmdline` read each, where [`scan`] reads every process's on the host.
pub fn scan_among(
    pids: impl IntoIterator<Item = u32>,
    run_dir: &Path,
) -> HashMap<String, Vec<u32>> {
    let mut found: HashMap<String, Vec<u32>> = HashMap::new();
    for pid in pids {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if let Some(name) = sliver_of(&cmdline, run_dir) {
            let pids = found.entry(name).or_default();
            if !pids.contains(&pid) {
                pids.push(pid);
            }
        }
    }
    for pids in found.values_mut() {
        // A jailed VMM's child is not a second VMM: its keeper stands for it.
        let all = pids.clone();
        pids.retain(|pid| parent_of(*pid).is_none_or(|parent| !all.contains(&parent)));
        pids.sort_unstable();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn only_this_daemons_vmms_are_ours() {
        let run = Path::new("/var/lib/sv/run");
        let ours = cmdline(&[
            "/usr/bin/slicevisor",
            "run",
            "--sliver",
            "web-1",
            "--exit-file",
            "/var/lib/sv/run/web-1/exit.json",
        ]);
        assert_eq!(sliver_of(&ours, run).as_deref(), Some("web-1"));
        let other_daemon = cmdline(&[
            "slicevisor",
            "run",
            "--sliver",
            "web-1",
            "--exit-file",
            "/srv/other/run/web-1/exit.json",
        ]);
        assert_eq!(sliver_of(&other_daemon, run), None);
        let mismatched = cmdline(&[
            "slicevisor",
            "run",
            "--sliver",
            "web-2",
            "--exit-file",
            "/var/lib/sv/run/web-1/exit.json",
        ]);
        assert_eq!(sliver_of(&mismatched, run), None);
        assert_eq!(sliver_of(&cmdline(&["bash", "-c", "run"]), run), None);
    }

    #[test]
    fn the_scan_finds_no_vmm_of_a_run_dir_nobody_uses() {
        assert!(scan(Path::new("/nonexistent/run")).is_empty());
    }
}
