//! Running `slicevisor node` for tests and benchmarks, and talking to it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use node_daemon::client::{try_request, Response};

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
