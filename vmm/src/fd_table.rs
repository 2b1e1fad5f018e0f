//! Each helper thread of the VMM (the vCPUs, the audit writer) takes a file descriptor table
//! of its own, so that the event loop's thread is the only user of the process's table.
//!
//! Why: the kernel looks up a descriptor without touching the file's reference count only
//! when the calling task's table has no other user (`fdget`'s fast path, `fs/file.c`:
//! `files->count == 1`). Threads share one table, so in a VMM with vCPU threads every TAP
//! `read`/`readv`/`writev` of the event loop took and dropped a reference on the TAP's file:
//! two atomic operations per packet, 3–4 % of a 64-byte frame's path here (`net_path 1000
//! tx-device` and `rx-device` against the same with `NET_PATH_IDLE_THREAD=1`, interleaved;
//! docs/benchmarks.md).
//!
//! The copy holds every descriptor open at the time (`unshare(2)` `CLONE_FILES`), and a
//! descriptor opened afterwards exists in the opening thread's table alone. So a helper thread
//! must not use descriptors another thread opens later, nor open any another thread uses:
//! - the vCPU threads run the devices' register accesses, which use descriptors made before
//!   the vCPUs start (eventfds, the TAP, disks), and write the guest console into an outbox
//!   that the event loop writes on to the log and the socket clients it accepts
//!   (`crate::console`); the boot report's `/proc/self/smaps_rollup` is opened and closed
//!   where it is read; the VMM waits until every vCPU has its table before the event loop
//!   opens anything (`crate::vcpu::StartGate::wait_arrived`);
//! - the audit writer keeps its segment files to itself.
//!
//! A file another thread closes stays open until the helpers end: the vCPUs are joined, and
//! the audit log dropped, before the VMM exits.

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
