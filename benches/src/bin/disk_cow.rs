//! Host disk used by N slivers of one image, each having written 1 MiB, side by side on a
//! file system with reflinks (XFS, a loop mount made here) and one without (ext4, the host's
//! own): the daemon makes each sliver's root disk (a reflink or a sparse copy, grown to
//! disk_max), then 1 MiB is written into each disk file where the guest's file system has
//! free space, and `statvfs` says what the file system lost.
//!
//! Run (root): `cargo build --release --workspace --bins && target/release/disk_cow [N]`
//! (needs target/guest/debian-12.ext4 from `bash guest-image/build.sh`, and mkfs.xfs).

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use e2e::daemon::{request, spawn_daemon, ResponseExt};
use e2e::netns::NetNs;
use serde_json::json;

fn used_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: statvfs is plain old data; statvfs(3) fills it from a NUL-terminated path.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0, "statvfs");
    (s.f_blocks - s.f_bfree) * s.f_frsize
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (after making the disks, after the writes), bytes used beyond the image, for `n` slivers
/// with their state directory at `state_parent/state`.
fn measure(state_parent: &Path, n: usize, image: &Path) -> (u64, u64) {
    let ns = NetNs::new("svcow");
    let (daemon, socket) = spawn_daemon(&ns, state_parent, &[], true);
    let kernel = state_parent.join("vmlinux-stub");
    std::fs::write(&kernel, b"\x7fELF").expect("kernel stub");
    let upload = e2e::run::run(
        [
            "image",
            "--socket",
            socket.to_str().expect("utf8"),
            "import",
            "debian-12",
            image.to_str().expect("utf8"),
        ],
        std::time::Duration::from_secs(600),
    );
    assert_eq!(upload.code(), 0, "{upload:?}");
    let state = state_parent.join("state");
    let base = used_bytes(&state);
    for i in 0..n {
        let spec = json!({"slice": "bench", "kernel": kernel, "vref": "debian-12",
                          "disk_max": 2_000_000});
        let r = request(
            &socket,
            "PUT",
            &format!("/slivers/c{i}"),
            Some(spec.to_string().as_bytes()),
        );
        assert_eq!(r.status, 201, "{}", r.json());
    }
    let made = used_bytes(&state) - base;
    let mib: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8 + 1).collect();
    for i in 0..n {
        let disk = state.join(format!("disks/c{i}.ext4"));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .expect("disk");
        // Past the image's data, in the grown file system's free space.
        f.write_all_at(&mib, 1_500 << 20).expect("write");
        f.sync_all().expect("sync");
    }
    let written = used_bytes(&state) - base;
    for i in 0..n {
        request(&socket, "DELETE", &format!("/slivers/c{i}"), None);
    }
    drop(daemon);
    (made, written)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let image = e2e::run::repo_root().join("target/guest/debian-12.ext4");
    assert!(
        image.exists(),
        "{} missing: bash guest-image/build.sh",
        image.display()
    );
    let mib = |b: u64| b as f64 / f64::from(1 << 20);

    let xfs_dir = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let img = xfs_dir.path().join("xfs.img");
    sh(Command::new("truncate").args(["-s", "8G"]).arg(&img));
    sh(Command::new("mkfs.xfs")
        .args(["-q", "-m", "reflink=1"])
        .arg(&img));
    let mnt = xfs_dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mnt");
    sh(Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt));
    let (xfs_made, xfs_written) = measure(&mnt, n, &image);
    sh(Command::new("umount").arg(&mnt));

    let ext4_dir = tempfile::tempdir_in("/var/tmp").expect("tmp");
    let (ext4_made, ext4_written) = measure(ext4_dir.path(), n, &image);

    println!(
        "{n} slivers of image debian-12 ({:.0} MiB apparent), disk_max 2 000 000 kB each",
        mib(std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0))
    );
    println!(
        "{:<34}| {:>18} | {:>24}",
        "state directory on", "disks made (MiB)", "after 1 MiB each (MiB)"
    );
    println!(
        "{:<34}| {:>18.1} | {:>24.1}",
        "XFS (reflinks)",
        mib(xfs_made),
        mib(xfs_written)
    );
    println!(
        "{:<34}| {:>18.1} | {:>24.1}",
        "ext4 (sparse copies)",
        mib(ext4_made),
        mib(ext4_written)
    );
    println!("(beyond the image itself; goal with reflinks: at most {n} MiB plus metadata)");
    println!("command: cargo build --release --workspace --bins && target/release/disk_cow {n}");
}
