//! Network namespaces for network tests: every address a test uses lives in a namespace the
//! test created, and the namespace (with its TAPs) is deleted when the test ends.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn run_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running `ip` (package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Create `<prefix>-<pid>-<n>` with loopback up.
    pub fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name]);
        let ns = Self { name };
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Create TAP `tap` in the namespace with address `cidr` (e.g. 10.77.0.1/24), up.
    pub fn add_tap(&self, tap: &str, cidr: &str) {
        run_ip(&["-n", &self.name, "tuntap", "add", "dev", tap, "mode", "tap"]);
        run_ip(&["-n", &self.name, "addr", "add", cidr, "dev", tap]);
        run_ip(&["-n", &self.name, "link", "set", tap, "up"]);
    }

    /// `program args...` run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// `program args...` in the namespace's network but the host's mounts (`nsenter --net`):
    /// unlike `ip netns exec`, which remounts `/sys` for the namespace, it keeps
    /// `/sys/fs/cgroup` in view, as a node daemon on a host has it.
    pub fn command_keeping_mounts(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.name))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Run `args` (program first) inside the namespace; panics unless it succeeds; returns
    /// its output, trimmed.
    pub fn sh(&self, args: &[&str]) -> String {
        let out = self
            .command(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", args[0]));
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A veth from here (`here`, address `addr`) to `peer` (`there`, address `peer_addr`),
    /// both up.
    pub fn veth(&self, here: &str, addr: &str, peer: &NetNs, there: &str, peer_addr: &str) {
        self.sh(&[
            "ip", "link", "add", here, "type", "veth", "peer", "name", there,
        ]);
        self.sh(&["ip", "link", "set", there, "netns", peer.name()]);
        self.sh(&["ip", "addr", "add", addr, "dev", here]);
        self.sh(&["ip", "link", "set", here, "up"]);
        peer.sh(&["ip", "addr", "add", peer_addr, "dev", there]);
        peer.sh(&["ip", "link", "set", there, "up"]);
    }

    /// Move the calling thread into the namespace (threads it spawns later inherit it).
    pub fn enter_this_thread(&self) {
        enter(&format!("/run/netns/{}", self.name));
    }

    /// Run `f` on a thread that has entered the namespace; sockets it creates stay there.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .expect("thread in netns")
    }
}

fn enter(path: &str) {
    let ns = File::open(path).expect("open netns");
    // SAFETY: setns on a valid namespace fd changes only the calling thread's namespace.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
