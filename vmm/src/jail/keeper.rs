//! The keeper: after `unshare(CLONE_NEWPID)` only a child lands in the new PID namespace, so
//! the VMM forks; the parent stays behind as the process its supervisor started (same pid,
//! same arguments), drops its privileges, enters its own seccomp filter, forwards stop
//! signals to the VMM and exits as the VMM did (the same code, or the same signal).

use super::{sys, JailError, JailSpec};

/// Signals the keeper passes on to the VMM.
const FORWARDED: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];

/// The child's end of a pipe whose other end only the keeper holds: it reads as hung up
/// once the keeper is gone.
#[derive(Debug)]
pub(super) struct Lifeline(std::os::fd::OwnedFd);

impl Lifeline {
    /// Die with the keeper: PR_SET_PDEATHSIG (again: the kernel clears it when the ids
    /// change), then end at once if the keeper is already gone.
    pub(super) fn hold(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: prctl(2) PR_SET_PDEATHSIG takes a signal number by value.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
        let mut poll = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd we own, without waiting.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready != 0 {
            // Hung up (or readable, which the keeper never makes it): the keeper is gone.
            // SAFETY: _exit(2) ends the process at once.
            unsafe { libc::_exit(1) };
        }
    }

    /// Its descriptor, to be kept open.
    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.0)
    }
}

/// Fork. Returns in the child (the VMM-to-be, which dies with the keeper) with its lifeline;
/// the parent keeps the child until it ends and then exits the same way.
pub(super) fn fork_keeper(spec: &JailSpec) -> Result<Lifeline, JailError> {
    let mut ends = [0; 2];
    // SAFETY: pipe2(2) writes two fds into `ends`.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("pipe2 (the keeper's lifeline)"));
    }
    let [read_end, write_end] = ends;
    // Stop signals stay blocked across the fork: the keeper collects them with sigwaitinfo,
    // the VMM unblocks them once its handlers are in place.
    let mut set = signal_set(&FORWARDED);
    // SAFETY: adding SIGCHLD to a sigset we own.
    unsafe { libc::sigaddset(&mut set, libc::SIGCHLD) };
    // SAFETY: blocks signals of this (only) thread; `set` is a valid sigset.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    // SAFETY: the process has one thread (jail::enter's contract), so the child is a full
    // copy that may go on running Rust code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys("fork"));
    }
    if pid == 0 {
        // SAFETY: the write end is the keeper's alone; `read_end` is ours to own.
        let lifeline = unsafe {
            libc::close(write_end);
            Lifeline(std::os::fd::FromRawFd::from_raw_fd(read_end))
        };
        lifeline.hold();
        // SIGCHLD was blocked only for the keeper's wait.
        let chld = signal_set(&[libc::SIGCHLD]);
        // SAFETY: unblocks SIGCHLD in this thread; `chld` is a valid sigset.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &chld, std::ptr::null_mut()) };
        return Ok(lifeline);
    }
    keep(pid, write_end, spec)
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it.
    let mut set = unsafe { std::mem::zeroed::<libc::sigset_t>() };
    // SAFETY: `set` is ours and valid.
    unsafe { libc::sigemptyset(&mut set) };
    for &sig in signals {
        // SAFETY: `set` is initialised; `sig` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, sig) };
    }
    set
}

/// The keeper's life: privileges dropped, every fd but stdio closed, stop signals passed on
/// to `vmm`, and the VMM's end taken as its own.
fn keep(vmm: libc::pid_t, lifeline: libc::c_int, spec: &JailSpec) -> ! {
    // The VMM's files: the keeper needs none of them, only its end of the lifeline.
    let lifeline = u32::try_from(lifeline).unwrap_or(3);
    // SAFETY: close_range(2) on the fds below and above the lifeline's.
    unsafe {
        if lifeline > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, lifeline - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, lifeline + 1, u32::MAX, 0u32);
    }
    crate::seccomp::forget_exit_file();
    let dropped = super::privileges::drop_ids(spec)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            crate::seccomp::enter(crate::seccomp::ThreadKind::Keeper).map_err(|e| e.to_string())
        });
    if let Err(e) = dropped {
        log::error!("jail keeper: {e}");
        // SAFETY: SIGKILL to our own child, which we may signal.
        unsafe { libc::kill(vmm, libc::SIGKILL) };
    }
    let mut waited = signal_set(&FORWARDED);
    // SAFETY: adding SIGCHLD to a sigset we own.
    unsafe { libc::sigaddset(&mut waited, libc::SIGCHLD) };
    loop {
        // SAFETY: siginfo_t is plain data, filled in by sigwaitinfo.
        let mut info = unsafe { std::mem::zeroed::<libc::siginfo_t>() };
        // SAFETY: waits for one of the blocked signals in `waited`, writing into `info`.
        let sig = unsafe { libc::sigwaitinfo(&waited, &mut info) };
        if FORWARDED.contains(&sig) {
            forward(vmm, sig);
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid(2) on our own child, writing into `status`.
        let done = unsafe { libc::waitpid(vmm, &mut status, libc::WNOHANG) };
        if done == vmm {
            exit_as(status);
        }
    }
}

/// Pass `sig` on to the VMM. Until the VMM has dropped to the jail's ids too (a moment after
/// the keeper), the kernel refuses with EPERM: retry for up to 5 s.
fn forward(vmm: libc::pid_t, sig: libc::c_int) {
    for _ in 0..500 {
        // SAFETY: kill(2) to our child, no memory passed.
        if unsafe { libc::kill(vmm, sig) } == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// End the keeper the way the VMM ended (`status` from waitpid).
fn exit_as(status: libc::c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        // SAFETY: restoring the default action and unblocking `sig`, then raising it, so
        // the supervisor sees the same signal; no memory is shared.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            let set = signal_set(&[sig]);
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(sig);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        1
    };
    // SAFETY: _exit(2) ends the process with `code`.
    unsafe { libc::_exit(code) }
}
