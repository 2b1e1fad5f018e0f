//! The processes init runs: dropbear (started at boot, restarted if it dies) and the console
//! getty (started by the relay on the first key pressed); and reaping every orphan.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::say;

const DROPBEAR: &str = "/usr/sbin/dropbear";
const AGETTY: &str = "/sbin/agetty";

/// What init started.
#[derive(Debug, Default)]
pub struct Services {
    sshd: Option<u32>,
    sshd_started: Option<Instant>,
    /// The console getty (or the shell it became), if running.
    pub getty: Option<u32>,
}

impl Services {
    /// Start dropbear in the foreground of its own process: keys only (`-s`), host keys made
    /// on first use (`-R`), log to /run/dropbear.log.
    pub fn start_sshd(&mut self) {
        let log = std::fs::File::create("/run/dropbear.log").ok();
        let mut cmd = Command::new(DROPBEAR);
        cmd.args(["-F", "-E", "-R", "-s", "-p", "22"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.map_or_else(Stdio::null, Stdio::from));
        match cmd.spawn() {
            Ok(child) => {
                self.sshd = Some(child.id());
                self.sshd_started = Some(Instant::now());
            }
            Err(e) => say(format_args!("starting {DROPBEAR}: {e}")),
        }
    }

    /// Wait until something listens on TCP `port` (read from /proc/net/tcp, no traffic), at
    /// most `timeout`; returns whether it does.
    pub fn wait_listening(port: u16, timeout: Duration) -> bool {
        let start = Instant::now();
        let needle = format!(":{port:04X} ");
        while start.elapsed() < timeout {
            let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
            // Lines: sl local_address rem_address st ...; st 0A is LISTEN.
            let listening = tcp.lines().skip(1).any(|l| {
                let mut f = l.split_whitespace().skip(1);
                let local = f.next().unwrap_or("");
                let state = f.nth(1).unwrap_or("");
                format!("{local} ").ends_with(&needle) && state == "0A"
            });
            if listening {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Start a root login (agetty with autologin) on the pty `tty` (e.g. `pts/0`).
    pub fn start_getty(&mut self, tty: &str) {
        let mut cmd = Command::new(AGETTY);
        cmd.args([
            "--autologin",
            "root",
            "--noclear",
            "--keep-baud",
            tty,
            "115200",
            "xterm-256color",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // A session of its own, so that the pty becomes its controlling terminal (job control
        // in the shell).
        // SAFETY: setsid(2) is async-signal-safe; nothing else runs in the child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::setsid();
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => self.getty = Some(child.id()),
            Err(e) => say(format_args!("starting {AGETTY} on {tty}: {e}")),
        }
    }

    /// Reap every child that ended; restart dropbear if it was one (at most every 5 s).
    pub fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: waitpid(2) with a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            let pid = u32::try_from(pid).unwrap_or(0);
            if self.sshd == Some(pid) {
                self.sshd = None;
                say(format_args!(
                    "dropbear ended (status {status}); see /run/dropbear.log"
                ));
            }
            if self.getty == Some(pid) {
                self.getty = None;
            }
        }
        let due = self
            .sshd_started
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if self.sshd.is_none() && due {
            self.start_sshd();
        }
    }
}
