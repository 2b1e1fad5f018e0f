//! The serial console: init holds it and relays it to a pseudo-terminal where the root getty
//! runs, so that the VMM's power-off request (`@@SLIVER-POWEROFF@@` typed on the console)
//! reaches init, never a shell.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::say;
use crate::services::Services;

/// What the VMM types on the console to ask for a power-off (vmm's `GUEST_POWEROFF_REQUEST`
/// without its newlines).
const POWEROFF: &[u8] = b"@@SLIVER-POWEROFF@@";
/// How long the pty is left unwatched after its master reported a hang-up.
const HUNG_UP_RETRY: Duration = Duration::from_millis(50);

/// Holds back console input that may be the start of the power-off request.
#[derive(Debug, Default)]
pub struct Matcher {
    held: usize,
}

impl Matcher {
    /// Feed `byte`; returns the bytes to pass on (held ones that turned out not to be the
    /// request, and this one), and whether the request is complete.
    pub fn feed(&mut self, byte: u8, out: &mut Vec<u8>) -> bool {
        if byte == POWEROFF[self.held] {
            self.held += 1;
            if self.held == POWEROFF.len() {
                self.held = 0;
                return true;
            }
            return false;
        }
        // The held bytes and this one: keep the longest tail that still starts the request,
        // pass on the rest.
        let mut seen = [0u8; POWEROFF.len()];
        seen[..self.held].copy_from_slice(&POWEROFF[..self.held]);
        seen[self.held] = byte;
        let seen = &seen[..=self.held];
        let keep = (0..seen.len())
            .rev()
            .find(|&k| seen.ends_with(&POWEROFF[..k]))
            .unwrap_or(0);
        out.extend_from_slice(&seen[..seen.len() - keep]);
        self.held = keep;
        false
    }
}

fn open(path: &CStr, flags: libc::c_int) -> Option<OwnedFd> {
    // SAFETY: open(2) with a NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    // SAFETY: a fresh descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new pty: its master and the slave's name relative to /dev (`pts/N`).
fn new_pty() -> Option<(OwnedFd, String)> {
    // SAFETY: posix_openpt(3) with constant flags; the fd is owned below.
    let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: grantpt/unlockpt/ptsname_r on our master; ptsname_r writes at most 64 bytes.
    let ok = unsafe {
        libc::grantpt(fd) == 0
            && libc::unlockpt(fd) == 0
            && libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) == 0
    };
    if !ok {
        return None;
    }
    // SAFETY: ptsname_r wrote a NUL-terminated string.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Some((master, path.trim_start_matches("/dev/").to_string()))
}

/// Raw mode on the console: bytes pass through as typed (the pty's line discipline does the
/// echo and editing for the shell).
fn raw(fd: &OwnedFd) {
    // SAFETY: termios is plain old data; tcgetattr fills it, tcsetattr reads it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd.as_raw_fd(), libc::TCSANOW, &t);
        }
    }
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: write(2) from a live slice.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => bytes = &bytes[n..],
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// Power off: ask every process to end, flush the file systems, reset (which the VMM,
/// booted with `reboot=k`, takes as the guest powering off).
fn power_off() -> ! {
    say(format_args!("power-off requested"));
    // SAFETY: kill(2), sync(2), sleep and reboot(2) take no pointers.
    unsafe {
        libc::kill(-1, libc::SIGTERM);
        libc::sleep(1);
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    loop {
        // SAFETY: pause(2) takes nothing.
        unsafe { libc::pause() };
    }
}

/// Relay the console forever; `services` is reaped along the way.
pub fn run(services: &mut Services) -> ! {
    let Some(console) = open(c"/dev/ttyS0", libc::O_RDWR | libc::O_NOCTTY) else {
        say(format_args!(
            "no /dev/ttyS0: no console shell, no power-off request"
        ));
        loop {
            services.reap();
            // SAFETY: sleep takes nothing.
            unsafe { libc::sleep(1) };
        }
    };
    raw(&console);
    let mut matcher = Matcher::default();
    let mut pty: Option<(OwnedFd, String)> = None;
    // While no process has the pty's slave open the master reports a hang-up: between
    // agetty's open and login's `vhangup()` and re-open, for instance. The pty is not watched
    // until then (no busy loop), and is given up only when the getty or the shell it became
    // has ended.
    let mut master_hung_up_at: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    let mut pass = Vec::with_capacity(4096);
    loop {
        services.reap();
        if services.getty.is_none() {
            pty = None;
        }
        if master_hung_up_at.is_some_and(|t| t.elapsed() >= HUNG_UP_RETRY) {
            master_hung_up_at = None;
        }
        let watch_master = master_hung_up_at.is_none();
        let mut fds = [
            libc::pollfd {
                fd: console.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: pty
                    .as_ref()
                    .filter(|_| watch_master)
                    .map_or(-1, |p| p.0.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if watch_master { 500 } else { 50 };
        // SAFETY: poll(2) on two pollfds we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) } <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // SAFETY: read(2) into a live buffer.
            let n = unsafe { libc::read(console.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            let n = usize::try_from(n).unwrap_or(0);
            pass.clear();
            for &b in &buf[..n] {
                if matcher.feed(b, &mut pass) {
                    power_off();
                }
            }
            if !pass.is_empty() {
                if services.getty.is_none() {
                    pty = new_pty();
                    if let Some((_, name)) = &pty {
                        services.start_getty(name);
                    }
                }
                if let Some((master, _)) = &pty {
                    write_all(master, &pass);
                }
            }
        }
        if fds[1].revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            if let Some((master, _)) = &pty {
                // SAFETY: read(2) into a live buffer.
                let n =
                    unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                match usize::try_from(n) {
                    Ok(n) if n > 0 => write_all(&console, &buf[..n]),
                    // EIO: nobody has the slave open now; see `master_hung_up_at`.
                    _ => master_hung_up_at = Some(Instant::now()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(m: &mut Matcher, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut hit = false;
        for &b in input {
            hit |= m.feed(b, &mut out);
        }
        (out, hit)
    }

    #[test]
    fn the_request_is_held_back_and_everything_else_passes() {
        let mut m = Matcher::default();
        assert_eq!(feed_all(&mut m, b"ls -l\n"), (b"ls -l\n".to_vec(), false));
        // The VMM's request, with its newlines: only the newlines reach the shell.
        let (out, hit) = feed_all(&mut m, b"\n@@SLIVER-POWEROFF@@");
        assert!(hit);
        assert_eq!(out, b"\n");
        // A prefix that breaks off is passed on whole.
        assert_eq!(
            feed_all(&mut m, b"@@SLIVER-x"),
            (b"@@SLIVER-x".to_vec(), false)
        );
        assert!(feed_all(&mut m, b"@@@SLIVER-POWEROFF@@").1);
    }
}
