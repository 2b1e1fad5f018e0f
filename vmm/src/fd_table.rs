//! The audit writer thread takes a file descriptor table of its own, so that it does not
//! count as a user of the process's table.
//!
//! Why: the kernel looks up a descriptor without touching the file's reference count only
//! when the calling task's table has no other user (`fdget`'s fast path, `fs/file.c`:
//! `files->count == 1`). Threads share one table, so every thread the audit adds would make
//! the event loop take and drop a reference on the TAP's file for each `read`/`writev`: two
//! atomic operations per packet, ~3 % of a 64-byte frame's path here (`perf record` on
//! `net_path 2000 tx-flows` against `tx-anti-spoofing`: `fput` 143 samples against 1;
//! docs/benchmarks.md). The writer keeps its segment files to itself, so it needs nothing
//! another thread opens later, and opens nothing another thread uses.
//!
//! The vCPU threads keep sharing the table: they write the guest's console to the clients the
//! event loop accepts and into log files they rotate themselves. In a VMM the event loop
//! therefore still pays the reference counting; taking it away needs the console's output
//! handed to the event loop first.
//!
//! The copy holds every descriptor open at the time (`unshare(2)` `CLONE_FILES`): a file
//! another thread closes afterwards stays open until the writer ends, which is when the audit
//! log is dropped.

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

    /// Device and inode of what `fd` is open on in the calling thread's table, if it is.
    fn file_id(fd: i32) -> Option<(u64, u64)> {
        // SAFETY: stat is plain data; fstat(2) fills it in or fails.
        let mut st = unsafe { std::mem::zeroed::<libc::stat>() };
        // SAFETY: fstat(2) of `fd` into `st`, which we own.
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    }

    #[test]
    fn a_thread_that_unshared_keeps_old_descriptors_and_its_new_ones_to_itself() {
        let dir = tempfile::tempdir().expect("tmp");
        let before = std::fs::File::create(dir.path().join("before")).expect("create");
        let new_path = dir.path().join("after");
        let (old_seen, new_fd, new_id) = std::thread::spawn({
            let (old, new_path) = (before.as_raw_fd(), new_path.clone());
            move || {
                super::unshare();
                let mine = std::fs::File::create(new_path).expect("create");
                let fd = mine.as_raw_fd();
                let id = file_id(fd);
                std::mem::forget(mine); // stays open in this thread's table alone
                (file_id(old), fd, id)
            }
        })
        .join()
        .expect("thread");
        assert_eq!(
            old_seen,
            file_id(before.as_raw_fd()),
            "a descriptor open before unsharing is in the copy"
        );
        // The number may be in use in the main table by now (other tests open files), but
        // not for the file the thread opened.
        assert!(new_id.is_some());
        assert_ne!(
            file_id(new_fd),
            new_id,
            "fd {new_fd}, opened after unsharing, must not be in the main table"
        );
    }
}
