//! A full disk under the node daemon's state directory (a 32 MiB tmpfs mounted for the test):
//! defining a sliver answers 507 naming the file; changing, stopping and deleting slivers
//! still work (record updates are written in place, deletes free space); a VMM that dies
//! meanwhile is recorded; no temporary file is left; and once space is back everything is
//! written and survives a restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use e2e::daemon::{pid_alive, wait_for_state, Daemon, ResponseExt};
use e2e::netns::NetNs;
use serde_json::{json, Value};

/// A tmpfs mounted at a directory of the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "svtest",
            ])
            .arg(at)
            .output()
            .expect("mount");
        assert!(out.status.success(), "mount tmpfs: {out:?}");
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the filesystem of `dir` with a file `filler`; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0xa5u8; 64 * 1024];
    while f.write_all(&chunk).is_ok() {}
    // Whatever partial block is left.
    while f.write_all(&[0xa5]).is_ok() {}
    path
}

fn spec(kernel: &Path, octet: u8) -> Value {
    json!({
        "slice": "pl_full",
        "kernel": kernel,
        "mem_mib": 16,
        "net": {"ipv4": format!("10.32.{octet}.2/24"), "host_ipv4": format!("10.32.{octet}.1")}
    })
}

#[test]
fn a_full_state_directory_refuses_new_slivers_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = e2e::tiny_guest::Program::new()
        .halt_forever()
        .write_elf(dir.path(), "halt.elf");
    let state = dir.path().join("state");
    let tmpfs = Tmpfs::mount(&state, "32m");
    let flags = ["--no-capture", "--guest-stop-timeout", "0"];
    let d = Daemon::start_with(dir.path(), Arc::new(NetNs::new("svfull")), &flags);
    for (name, octet) in [("a", 1), ("b", 2), ("c", 3)] {
        let r = d.call("PUT", &format!("/slivers/{name}"), Some(spec(&k, octet)));
        assert_eq!(r.status, 201, "{r:?}");
    }
    let started = |name: &str| {
        let r = d.call("POST", &format!("/slivers/{name}/start"), None);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["pid"].as_u64().expect("pid")
    };
    let (pa, pb) = (started("a"), started("b"));
    let filler = fill(&state);

    let r = d.call("PUT", "/slivers/d", Some(spec(&k, 4)));
    assert_eq!(r.status, 507, "{r:?}");
    let error = r.json()["error"].as_str().expect("error").to_string();
    assert!(
        error.contains("slivers/") && error.contains("no space left"),
        "the reply names the file: {error}"
    );
    assert_eq!(d.call("GET", "/slivers/d", None).status, 404);
    let r = d.call("PATCH", "/slivers/a", Some(json!({"net_share": 7})));
    assert_eq!(r.status, 200, "limits change in place: {r:?}");
    let r = d.call("POST", "/slivers/a/stop", None);
    assert_eq!(
        (r.status, r.json()["state"].clone()),
        (200, json!("stopped")),
        "{r:?}"
    );
    assert!(!pid_alive(pa));
    // SAFETY: killing the VMM this test's daemon started.
    unsafe { libc::kill(libc::pid_t::try_from(pb).expect("pid"), libc::SIGKILL) };
    let b = wait_for_state(&d, "b", "failed");
    assert_eq!(b["exit_reason"], "VMM killed by signal 9");
    assert_eq!(d.call("DELETE", "/slivers/c", None).status, 204);
    // A start: the VMM runs if the space the delete freed is enough for it, or fails saying
    // why through its reserved exit file, or the start is refused with 507; never wedged.
    let r = d.call("POST", "/slivers/a/start", None);
    match r.status {
        200 => {
            std::thread::sleep(std::time::Duration::from_millis(500));
            let a = d.call("GET", "/slivers/a", None).json();
            match a["state"].as_str() {
                Some("running") => {
                    let r = d.call("POST", "/slivers/a/stop", None);
                    assert_eq!(r.json()["state"], "stopped", "{r:?}");
                }
                Some("failed") => {
                    let reason = a["exit_reason"].as_str().unwrap_or_default();
                    assert!(reason.contains("No space left"), "{a}");
                }
                _ => panic!("after a start on a full disk: {a}"),
            }
        }
        507 => assert!(r.body.contains("no space left"), "{r:?}"),
        other => panic!("start on a full disk: {other} {r:?}"),
    }
    // run/ and each sliver's run/NAME/.
    let tmp: Vec<String> = std::fs::read_dir(state.join("run"))
        .expect("run dir")
        .flatten()
        .flat_map(|e| {
            let inner = std::fs::read_dir(e.path()).into_iter().flatten().flatten();
            std::iter::once(e.path()).chain(inner.map(|f| f.path()))
        })
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(tmp.is_empty(), "temporary files left in run/: {tmp:?}");
    let mut files: Vec<String> = std::fs::read_dir(state.join("slivers"))
        .expect("slivers")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        ["a.rec", "b.rec"],
        "c's record gone, no temporary file left"
    );

    // Space comes back: defining works again, and everything was written.
    std::fs::remove_file(&filler).expect("free");
    assert_eq!(d.call("PUT", "/slivers/d", Some(spec(&k, 4))).status, 201);
    let ns = d.ns.clone();
    d.stop();
    let d = Daemon::start_with(dir.path(), ns, &flags);
    let a = d.call("GET", "/slivers/a", None).json();
    assert_eq!(
        (a["state"].clone(), a["spec"]["net"]["net_share"].clone()),
        (json!("stopped"), json!(7)),
        "{a}"
    );
    let b = d.call("GET", "/slivers/b", None).json();
    assert_eq!(
        (b["state"].clone(), b["exit_reason"].clone()),
        (json!("failed"), json!("VMM killed by signal 9")),
        "{b}"
    );
    assert_eq!(d.call("GET", "/slivers/c", None).status, 404);
    assert_eq!(d.call("GET", "/slivers/d", None).status, 200);
    d.stop();
    drop(tmpfs);
}
