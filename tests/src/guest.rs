//! The project's Linux guest, built by `guest-kernel/build.sh` into `target/guest/`.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// Time one real Linux boot may take here, command and power-off included. Measured on the
/// PVM test hosts: about 65 s to `SLIVER-READY` and 70 s to power-off with one vCPU (see
/// docs/boot-time.md); the margin covers a loaded CI machine and a 2-vCPU guest.
pub const LINUX_BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Paths of the guest kernel and initramfs; panics with the command to build them if absent.
pub fn artifacts() -> (PathBuf, PathBuf) {
    let dir = crate::run::repo_root().join("target/guest");
    let kernel = dir.join("vmlinux");
    let initrd = dir.join("initramfs.cpio");
    for p in [&kernel, &initrd] {
        assert!(
            p.exists(),
            "{} is missing: run `bash guest-kernel/build.sh` (README's test command does)",
            p.display()
        );
    }
    (kernel, initrd)
}

/// The reference image `debian-12` built by `guest-image/build.sh`; panics with the command
/// to build it if absent.
pub fn reference_image() -> PathBuf {
    let image = crate::run::repo_root().join("target/guest/debian-12.ext4");
    assert!(
        image.exists(),
        "{} is missing: run `bash guest-image/build.sh` (README's test command does)",
        image.display()
    );
    image
}

/// Linux boots are CPU-bound emulation here; two at once take more than twice as long. Tests
/// in one test binary hold this while their guest runs (cargo runs test binaries one at a
/// time), so each boot gets the machine.
pub fn boot_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh, empty ext4 file system image of `mib` MiB at `dir/name` (for image imports that
/// no guest boots from).
pub fn ext4_image(dir: &std::path::Path, name: &str, mib: u32) -> PathBuf {
    let path = dir.join(name);
    let out = std::process::Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(&path)
        .arg(format!("{mib}M"))
        .output()
        .expect("mke2fs (e2fsprogs)");
    assert!(out.status.success(), "{out:?}");
    path
}
