//! Running `slicevisor node` for tests and benchmarks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::run::{slicevisor_bin, ChildGuard};

/// Start a node daemon inside `ns`, with socket `dir/node.sock` and state in `dir/state`, plus
/// `extra` flags; returns once it accepts connections. Its output is piped (read it when it
/// exits) unless `quiet`, when it is discarded.
pub fn spawn_daemon(ns: &NetNs, dir: &Path, extra: &[&str], quiet: bool) -> (ChildGuard, PathBuf) {
    let socket = dir.join("node.sock");
    let out = || if quiet { Stdio::null() } else { Stdio::piped() };
    let child = ns
        .command(slicevisor_bin())
        .args(["node", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
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
    (child, socket)
}

/// Now as RFC 3339 (what `slicevisor audit query --at` takes).
pub fn now_rfc3339() -> String {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    vmm::audit::params::format_time(ns)
}

/// The path of `GET /audit?{filters}&at=<now>` (with `at` escaped for a URL).
pub fn audit_now_path(filters: &str) -> String {
    format!("/audit?{filters}&at={}", now_rfc3339().replace('+', "%2B"))
}
