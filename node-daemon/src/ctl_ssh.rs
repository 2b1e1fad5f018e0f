//! `slicevisor ctl ssh NAME [-- CMD...]`: ssh to a sliver from the node, in the daemon's
//! network namespace (entered when it differs from ours; that needs root), as root with the
//! caller's own key (or `--identity`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::client::{connect, runtime, sliver_path, try_request_within};

/// Where sliver `name` answers ssh, from its view (`GET /slivers/{name}`).
fn ssh_host(socket: &Path, name: &str, timeout: Duration) -> Result<String, String> {
    let path = sliver_path(name, "").map_err(|e| e.to_string())?;
    let r = try_request_within(socket, "GET", &path, None, timeout)
        .map_err(|e| format!("--socket {e}"))?;
    let body = r.try_json().unwrap_or_default();
    if r.status != 200 {
        return Err(format!(
            "{} {}",
            r.status,
            body["error"].as_str().unwrap_or(&r.body)
        ));
    }
    body["ssh"]["host"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("sliver {name} has no ssh access (it needs vref, keys and net)"))
}

/// The daemon's pid: the credentials the kernel keeps for the socket's listener.
fn daemon_pid(socket: &Path) -> Result<i32, String> {
    let rt = runtime(socket).map_err(|e| e.to_string())?;
    let stream = rt
        .block_on(connect(socket))
        .map_err(|e| format!("--socket {e}"))?;
    stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .ok_or_else(|| format!("--socket {}: the daemon's pid is unknown", socket.display()))
}

/// Enter the network namespace of process `pid` if it is not ours.
fn enter_netns_of(pid: i32) -> Result<(), String> {
    let theirs = format!("/proc/{pid}/ns/net");
    let same = std::fs::metadata(&theirs)
        .and_then(|t| std::fs::metadata("/proc/self/ns/net").map(|o| (t, o)))
        .map(|(t, o)| {
            use std::os::unix::fs::MetadataExt;
            (t.dev(), t.ino()) == (o.dev(), o.ino())
        })
        .map_err(|e| format!("{theirs}: {e}"))?;
    if same {
        return Ok(());
    }
    let ns = std::fs::File::open(&theirs).map_err(|e| format!("{theirs}: {e}"))?;
    // SAFETY: setns(2) on a namespace descriptor we own; affects only this thread, which
    // then execs ssh.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "entering the daemon's network namespace ({theirs}): {} (run as root)",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Replace this process by ssh to sliver `name`; returns only on failure (exit code 1).
pub fn run(
    socket: &Path,
    name: &str,
    identity: Option<&PathBuf>,
    command: &[String],
    timeout: Duration,
) -> i32 {
    let fail = |e: String| {
        eprintln!("slicevisor: error: {e}");
        1
    };
    let host = match ssh_host(socket, name, timeout) {
        Ok(h) => h,
        Err(e) => return fail(e),
    };
    if let Err(e) = daemon_pid(socket).and_then(enter_netns_of) {
        return fail(e);
    }
    let mut ssh = std::process::Command::new("ssh");
    // The link is the node's own TAP; a sliver's host key changes when it is re-created.
    ssh.args([
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=60",
        "-o",
        "ConnectionAttempts=3",
    ]);
    if let Some(key) = identity {
        ssh.arg("-i").arg(key).args(["-o", "IdentitiesOnly=yes"]);
    }
    ssh.arg(format!("root@{host}"));
    ssh.args(command);
    let e = ssh.exec();
    fail(format!("running ssh: {e} (package openssh-client)"))
}
