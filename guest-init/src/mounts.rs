//! The file systems every Linux userland expects, mounted with syscalls (no `mount` binary).

use std::ffi::CString;

use crate::say;

/// (source, target, type, flags, data).
const MOUNTS: [(&str, &str, &str, libc::c_ulong, &str); 6] = [
    (
        "proc",
        "/proc",
        "proc",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    (
        "sysfs",
        "/sys",
        "sysfs",
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    ),
    // The kernel mounts devtmpfs on /dev after the root file system (DEVTMPFS_MOUNT); this
    // covers a kernel that does not.
    ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
    (
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "gid=5,mode=620,ptmxmode=666",
    ),
    (
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    ),
    (
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    ),
];

/// Mount one file system; `false` (and a console line) on failure, except "already there".
pub fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> bool {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f), Ok(d)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
        CString::new(data),
    ) else {
        return false;
    };
    // SAFETY: mount(2) with NUL-terminated strings we own for the call.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            say(format_args!("mounting {fstype} on {target}: {e}"));
            return false;
        }
    }
    true
}

/// Mount /proc, /sys, /dev, /dev/pts, /run and /dev/shm; remount / read-write if the
/// kernel mounted it read-only and the command line asked for `rw`.
pub fn mount_all() {
    for (source, target, fstype, flags, data) in MOUNTS {
        mount(source, target, fstype, flags, data);
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    if cmdline.split_whitespace().any(|w| w == "rw") {
        let root = CString::new("/").unwrap_or_default();
        // SAFETY: mount(2) remount with a NUL-terminated target; no data.
        unsafe {
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT,
                std::ptr::null(),
            )
        };
    }
}
