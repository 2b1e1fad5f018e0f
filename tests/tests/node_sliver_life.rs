//! A sliver a researcher lives in, with the real Linux guest booted by the daemon from the
//! reference image: ssh in with the slice's key (and not with another), the console's login
//! and a typed command, a file that survives stop and start, a disk quota the guest runs
//! into as "no space left on device" while the host file stays within it, a second sliver of
//! the image that does not see the first one's files, delete removing the disk, and the image
//! never written. Everything inside a network namespace this test creates.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::daemon::{Daemon, ResponseExt};
use e2e::guest::{artifacts, boot_lock, reference_image, LINUX_BOOT_TIMEOUT};
use e2e::run::{run, sha256sum, slicevisor_bin, Outcome};
use serde_json::json;

/// A root disk of ~1.05 GB for an image of 1 GiB: little room, quick to fill.
const DISK_MAX_KB: u64 = 1_100_000;

fn keypair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(out.status.success(), "{out:?}");
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
    (key, public.trim().to_string())
}

/// `slicevisor ctl ssh NAME -i KEY -- CMD` (enters the daemon's namespace itself).
fn ssh(d: &Daemon, name: &str, key: &Path, cmd: &str) -> Outcome {
    let socket = d.socket.to_str().expect("utf8");
    let key = key.to_str().expect("utf8");
    run(
        ["ctl", "--socket", socket, "ssh", name, "-i", key, "--", cmd],
        Duration::from_secs(180),
    )
}

/// How many times the sliver's console said its ssh server listens (the log spans boots).
fn sshd_lines(d: &Daemon, name: &str) -> usize {
    d.call(
        "GET",
        &format!("/slivers/{name}/console?tail=2097152"),
        None,
    )
    .body
    .matches("SLIVER-SSHD ")
    .count()
}

/// Wait until the sliver's console says its ssh server listens, `before` times having been
/// said before this boot; returns the seconds waited.
fn wait_for_sshd(d: &Daemon, name: &str, before: usize, since: Instant) -> f64 {
    while sshd_lines(d, name) <= before {
        assert!(
            since.elapsed() < LINUX_BOOT_TIMEOUT,
            "sliver {name} never started its ssh server:\n{}",
            d.call("GET", &format!("/slivers/{name}/console"), None)
                .body
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    since.elapsed().as_secs_f64()
}

/// Attach to the console, press Enter, wait for the shell, type `command`, wait for
/// `expect`; returns everything the console showed.
fn console_session(d: &Daemon, name: &str, command: &str, expect: &str) -> String {
    let mut child = Command::new(slicevisor_bin())
        .args(["ctl", "--socket"])
        .arg(&d.socket)
        .args(["console", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ctl console");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |needle: &str, secs: u64| {
        let end = Instant::now() + Duration::from_secs(secs);
        while !String::from_utf8_lossy(&seen).contains(needle) {
            if Instant::now() >= end {
                return Err(format!(
                    "console never showed {needle:?}; it showed:\n{}",
                    String::from_utf8_lossy(&seen)
                ));
            }
            if let Ok(bytes) = rx.recv_timeout(Duration::from_millis(500)) {
                seen.extend(bytes);
            }
        }
        Ok(())
    };
    stdin.write_all(b"\n").expect("Enter");
    let typed = wait_for("login: root (automatic login)", 120)
        .and_then(|()| wait_for("# ", 120))
        .and_then(|()| {
            stdin
                .write_all(format!("{command}\n").as_bytes())
                .map_err(|e| format!("typing: {e}"))
        })
        .and_then(|()| wait_for(expect, 120));
    if let Err(e) = typed {
        let _ = child.kill();
        let out = child.wait_with_output().expect("ctl console ends");
        panic!(
            "{e}\nctl console said: {}\nthe console log ends with:\n{}",
            String::from_utf8_lossy(&out.stderr),
            d.call("GET", &format!("/slivers/{name}/console?tail=4096"), None)
                .body
        );
    }
    stdin.write_all(&[0x1d]).expect("detach");
    let status = child.wait().expect("ctl console ends");
    assert!(status.success(), "detached cleanly");
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_sliver_to_live_in() {
    let (kernel, _) = artifacts();
    let image = reference_image();
    let _one_at_a_time = boot_lock();
    let dir = tempfile::tempdir().expect("tmp");
    let (key1, pub1) = keypair(dir.path(), "researcher");
    let (key2, pub2) = keypair(dir.path(), "stranger");
    let d = Daemon::start_with(
        dir.path(),
        std::sync::Arc::new(e2e::netns::NetNs::new("svlive")),
        &["--guest-stop-timeout", "60"],
    );
    let socket = d.socket.to_str().expect("utf8").to_string();
    let imported = run(
        [
            "image",
            "--socket",
            &socket,
            "import",
            "debian-12",
            image.to_str().expect("utf8"),
        ],
        Duration::from_secs(600),
    );
    assert_eq!(imported.code(), 0, "{imported:?}");
    let stored = dir.path().join("state/images/debian-12.img");
    let image_hash = sha256sum(&stored);
    assert_eq!(image_hash, sha256sum(&image));
    let spec = |keys: &[&str], net: u8| {
        json!({"slice": "princeton_test", "kernel": kernel, "mem_mib": 256,
               "vref": "debian-12", "disk_max": DISK_MAX_KB, "keys": keys,
               "net": {"ipv4": format!("10.31.{net}.2/30"), "host_ipv4": format!("10.31.{net}.1")}})
    };
    assert_eq!(
        d.call("PUT", "/slivers/s1", Some(spec(&[&pub1], 1))).status,
        201
    );
    let view = d.call("GET", "/slivers/s1", None).json();
    assert_eq!(view["ssh"]["command"], "ssh root@10.31.1.2");

    // Boot, then ssh in with the slice's key; another key is refused.
    let started = Instant::now();
    assert_eq!(d.call("POST", "/slivers/s1/start", None).status, 200);
    let to_sshd = wait_for_sshd(&d, "s1", 0, started);
    let first = ssh(
        &d,
        "s1",
        &key1,
        "echo data-1 > /root/persist && sync && hostname",
    );
    let to_login = started.elapsed().as_secs_f64();
    assert_eq!(first.code(), 0, "{first:?}");
    assert_eq!(first.stdout.trim(), "s1");
    eprintln!(
        "boot to sshd listening {to_sshd:.1} s; to the first ssh command done {to_login:.1} s"
    );
    let stranger = ssh(&d, "s1", &key2, "true");
    assert_ne!(stranger.code(), 0, "another key is refused: {stranger:?}");
    assert!(
        stranger.stderr.contains("Permission denied"),
        "{}",
        stranger.stderr
    );

    // The console: the login and a typed command's output.
    let shown = console_session(&d, "s1", "echo console-$((6*7))", "console-42");
    assert!(shown.contains("s1 login: root"), "{shown}");

    // Fill the disk: the guest's file system says "no space left", the host file stays within
    // disk_max.
    let fill = ssh(
        &d,
        "s1",
        &key1,
        // Allocate all but 1 MiB of the free blocks (root's reserve included: this is
        // root), then write 4 MiB.
        "fallocate -l $(( $(stat -f -c '%f*%S' /) - 1048576 )) /fill; \
         dd if=/dev/zero of=/more bs=64k count=64 2>&1; sync; df -k / | tail -1",
    );
    assert!(fill.stdout.contains("No space left on device"), "{fill:?}");
    let disk = dir.path().join("state/disks/s1.ext4");
    let meta = std::fs::metadata(&disk).expect("disk");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        meta.len(),
        DISK_MAX_KB * 1024,
        "the disk's size is disk_max"
    );
    assert!(
        meta.blocks() * 512 <= DISK_MAX_KB * 1024,
        "the host file stays within disk_max"
    );
    assert_eq!(ssh(&d, "s1", &key1, "rm -f /fill /more").code(), 0);

    // Stop and start: the file is still there.
    let stopped = d.call("POST", "/slivers/s1/stop", None).json();
    assert_eq!(stopped["exit_reason"], "guest powered off", "{stopped}");
    let restarted = Instant::now();
    let before = sshd_lines(&d, "s1");
    assert_eq!(d.call("POST", "/slivers/s1/start", None).status, 200);
    wait_for_sshd(&d, "s1", before, restarted);
    let back = ssh(&d, "s1", &key1, "cat /root/persist");
    assert_eq!(back.stdout.trim(), "data-1", "{back:?}");
    assert_eq!(d.call("POST", "/slivers/s1/stop", None).status, 200);

    // A second sliver of the image: its disk does not have the first one's file.
    assert_eq!(
        d.call("PUT", "/slivers/s2", Some(spec(&[&pub2], 2))).status,
        201
    );
    let debugfs = |disk: &Path| {
        let out = Command::new("debugfs")
            .args(["-R", "cat /root/persist"])
            .arg(disk)
            .output()
            .expect("debugfs (e2fsprogs)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(debugfs(&disk).trim(), "data-1");
    assert_eq!(debugfs(&dir.path().join("state/disks/s2.ext4")).trim(), "");

    // Delete: the disk goes; the image was never written.
    assert_eq!(d.call("DELETE", "/slivers/s1", None).status, 204);
    assert!(!disk.exists());
    assert_eq!(d.call("DELETE", "/slivers/s2", None).status, 204);
    assert_eq!(sha256sum(&stored), image_hash, "the image never changed");
    d.stop();
}
