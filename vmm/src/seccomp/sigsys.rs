//! The SIGSYS handler of kill mode: a filter's SECCOMP_RET_TRAP raises SIGSYS on the thread
//! that made the forbidden call, with the call's number in `siginfo_t`. The handler writes
//! `{"code":EXIT_SECCOMP,"reason":"seccomp: syscall NAME"}` into the reserved exit file (in
//! place, as [`crate::exit::ExitRecord::write`] does) and the reason on stderr, then `_exit`s.
//! Everything it calls is async-signal-safe (pwrite, fdatasync, write, _exit) and allowed by
//! every filter.

use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use super::{syscall_names, SeccompError};
use crate::exit::{ExitRecord, EXIT_SECCOMP};

/// The exit file, opened before any filter (-1: none).
static EXIT_FD: AtomicI32 = AtomicI32::new(-1);

/// Offset of `_sigsys._syscall` in x86_64 `siginfo_t` (include/uapi/asm-generic/siginfo.h:
/// three ints and padding to 16, then `void *_call_addr`, then `int _syscall`).
const SI_SYSCALL_OFFSET: usize = 24;

/// The exit file's descriptor, if one is open.
pub(super) fn exit_fd() -> Option<std::os::fd::RawFd> {
    Some(EXIT_FD.load(Ordering::Acquire)).filter(|&fd| fd >= 0)
}

/// Forget the exit file (its descriptor was closed).
pub(super) fn forget_exit_file() {
    EXIT_FD.store(-1, Ordering::Release);
}

/// `si_code` of a SIGSYS raised by a seccomp filter (asm-generic/siginfo.h).
const SYS_SECCOMP: i32 = 1;
/// Offset of `si_code` in `siginfo_t` (after si_signo and si_errno).
const SI_CODE_OFFSET: usize = 8;

/// Open (reserving it if need be) `exit_file` and install the handler.
pub(super) fn install(exit_file: Option<&Path>) -> Result<(), SeccompError> {
    if let Some(path) = exit_file {
        let setup = |source| SeccompError::Setup {
            what: format!("--exit-file {}", path.display()),
            source,
        };
        if !ExitRecord::is_reserved(path) {
            ExitRecord::reserve(path).map_err(setup)?;
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(setup)?;
        EXIT_FD.store(file.into_raw_fd(), Ordering::Release);
    }
    // SAFETY: sigaction is plain data, filled in before use.
    let mut action = unsafe { std::mem::zeroed::<libc::sigaction>() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler for SIGSYS; `action` is valid and initialised, the old
    // action is not wanted (null).
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SeccompError::Setup {
            what: "installing the SIGSYS handler".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Appends bytes to a fixed buffer, dropping what does not fit.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `seccomp: syscall NAME` (or the number when the table does not know it).
fn reason(nr: i32) -> Line {
    let mut line = Line {
        buf: [0; 160],
        len: 0,
    };
    line.push(b"seccomp: syscall ");
    match syscall_names::name(i64::from(nr)) {
        Some(name) => line.push(name.as_bytes()),
        None => line.push_number(u64::from(nr.unsigned_abs())),
    }
    line
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS (SA_SIGINFO); the offset is that
    // of `_sigsys._syscall` in its layout.
    let nr = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    // SAFETY: as above; si_code is the third int.
    let code = unsafe {
        info.cast::<u8>()
            .add(SI_CODE_OFFSET)
            .cast::<i32>()
            .read_unaligned()
    };
    let why = if code == SYS_SECCOMP {
        reason(nr)
    } else {
        let mut line = Line {
            buf: [0; 160],
            len: 0,
        };
        line.push(b"SIGSYS sent by another process");
        line
    };
    let mut record = Line {
        buf: [0; 160],
        len: 0,
    };
    record.push(b"{\"code\":");
    record.push_number(EXIT_SECCOMP as u64);
    record.push(b",\"reason\":\"");
    record.push(why.as_bytes());
    record.push(b"\"}");
    let fd = EXIT_FD.load(Ordering::Acquire);
    if fd >= 0 {
        let bytes = record.as_bytes();
        // SAFETY: pwrite(2) and fdatasync(2) on the exit file's fd, reading `bytes`, which
        // lives on this stack frame.
        unsafe {
            libc::pwrite(fd, bytes.as_ptr().cast(), bytes.len(), 0);
            libc::fdatasync(fd);
        }
    }
    let mut msg = Line {
        buf: [0; 160],
        len: 0,
    };
    msg.push(b"slicevisor: ");
    msg.push(why.as_bytes());
    msg.push(b"\n");
    let bytes = msg.as_bytes();
    // SAFETY: write(2) to stderr from a stack buffer, then _exit(2).
    unsafe {
        libc::write(2, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(EXIT_SECCOMP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_names_the_call_or_its_number() {
        assert_eq!(
            reason(libc::SYS_ptrace as i32).as_bytes(),
            b"seccomp: syscall ptrace"
        );
        assert_eq!(reason(9999).as_bytes(), b"seccomp: syscall 9999");
        assert_eq!(reason(0).as_bytes(), b"seccomp: syscall read");
    }

    const CHILD_ENV: &str = "SLICEVISOR_SIGSYS_TEST_EXIT_FILE";

    /// Run in a child process by `a_forbidden_call_is_recorded_by_name`: filters on, then a
    /// call no list allows.
    #[test]
    fn forbidden_call_child() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        super::super::prepare(super::super::SeccompMode::Kill, Some(Path::new(&path)))
            .expect("prepare");
        super::super::enter(super::super::ThreadKind::EventLoop).expect("enter");
        // SAFETY: getppid(2) has no arguments; here it is refused and never returns.
        unsafe { libc::syscall(libc::SYS_getppid) };
        unreachable!("getppid was allowed");
    }

    /// The whole path through the kernel: the trap, the number read from `siginfo_t` at
    /// [`SI_SYSCALL_OFFSET`], the name, the exit record and the exit code.
    #[test]
    fn a_forbidden_call_is_recorded_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exit_file = dir.path().join("exit.json");
        let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
            .args([
                "--exact",
                "seccomp::sigsys::tests::forbidden_call_child",
                "--nocapture",
            ])
            .env(CHILD_ENV, &exit_file)
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_SECCOMP), "stderr: {stderr}");
        assert!(
            stderr.contains("slicevisor: seccomp: syscall getppid"),
            "{stderr}"
        );
        let record = ExitRecord::read(&exit_file).expect("exit record");
        assert_eq!(record.code, EXIT_SECCOMP);
        assert_eq!(record.reason, "seccomp: syscall getppid");
    }
}
