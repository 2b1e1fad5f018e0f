//! Each helper thread of the VMM (vCPUs, the audit writer) takes a file descriptor table of
//! its own, so that the event loop's thread is the only user of the process's table.
//!
//! Why: the kernel looks up a descriptor without touching the file's reference count only
//! when the calling task's table has no other user (`fdget`'s fast path, `fs/file.c`:
//! `files->count == 1`). Threads share one table, so in a VMM with vCPU threads every TAP
//! `readv`/`writev` of the event loop took and dropped a reference on the TAP's file: two
//! atomic operations per packet, ~3 % of a 64-byte frame's path here (`perf record` on
//! `net_path 2000 tx-anti-spoofing` with an idle second thread in the process: `fput` and
//! `fdget_pos` 3.6 % of samples, 1.0 % without it; docs/benchmarks.md).
//!
//! The copy holds every descriptor open at the time (`unshare(2)` `CLONE_FILES`): a file the
//! event loop closes afterwards stays open until the helper thread ends, and a descriptor a
//! helper opens afterwards exists in its table alone. The vCPU threads open nothing another
//! thread uses (the exit record is written and closed where it is opened); the audit writer
//! keeps its segment files to itself. Both end before the VMM does.

/// Give the calling thread its own copy of the file descriptor table (`unshare(2)`
/// `CLONE_FILES`). A failure costs only speed: it is logged, and the thread goes on sharing.
pub fn unshare() {
    // SAFETY: unshare(2) with CLONE_FILES only copies this thread's descriptor table; no
    // memory is passed.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        log::warn!(
            "unshare(CLONE_FILES) on thread {:?}: {} (the event loop's TAP I/O stays slower)",
            std::thread::current().name(),
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    /// Whether `fd` is open in the calling thread's table.
    fn is_open(fd: i32) -> bool {
        // SAFETY: fcntl(2) F_GETFD only asks about `fd`.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn a_thread_that_unshared_keeps_old_descriptors_and_its_new_ones_to_itself() {
        let before = std::fs::File::open("/dev/null").expect("open");
        let (old_seen, new_fd) = std::thread::spawn({
            let old = before.as_raw_fd();
            move || {
                super::unshare();
                let mine = std::fs::File::open("/dev/null").expect("open");
                let fd = mine.as_raw_fd();
                std::mem::forget(mine); // stays open in this thread's table alone
                (is_open(old), fd)
            }
        })
        .join()
        .expect("thread");
        assert!(
            old_seen,
            "a descriptor open before unsharing is in the copy"
        );
        assert!(
            !is_open(new_fd),
            "fd {new_fd}, opened after unsharing, must not be in the main table"
        );
    }
}
