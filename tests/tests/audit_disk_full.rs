//! A full disk under the audit log: the writer counts and reports I/O errors, keeps the
//! records in memory, never crashes, and catches up once space is freed. The disk is a 1 MiB
//! tmpfs mounted in a private mount namespace (`unshare -m`), so nothing else sees it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::run::wait_with_timeout;

const HELPER: &str = env!("CARGO_BIN_EXE_audit_writer");

fn counters(stdout: &str, tag: &str) -> serde_json::Value {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix(tag))
        .unwrap_or_else(|| panic!("no `{tag}` line in {stdout:?}"));
    serde_json::from_str(line.trim()).expect("counters json")
}

fn field(v: &serde_json::Value, name: &str) -> u64 {
    v[name].as_u64().unwrap_or_else(|| panic!("{name} in {v}"))
}

#[test]
fn a_full_disk_is_counted_and_reported_and_writing_resumes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir");
    let child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=1m slicevisor-test "$1" && exec "$2" diskfull "$1""#)
        .args([Path::new("sh"), &mnt, Path::new(HELPER)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unshare (package util-linux)");
    let out = wait_with_timeout(child, Duration::from_secs(60));
    assert!(
        out.status.success(),
        "the writer must survive a full disk: {out:?}"
    );
    let full = counters(&out.stdout, "full ");
    assert!(field(&full, "io_errors") >= 3, "{full}");
    assert!(
        field(&full, "durable") < field(&full, "appended"),
        "records wait in memory while the disk is full: {full}"
    );
    assert!(
        out.stderr.contains("No space left on device"),
        "the error is reported: {}",
        out.stderr
    );
    assert!(
        out.stdout.contains("ring-refused ") && out.stdout.contains("No space left on device"),
        "a capture ring on a full disk is refused at open: {}",
        out.stdout
    );
    let freed = counters(&out.stdout, "freed ");
    assert_eq!(
        field(&freed, "durable") + field(&freed, "discarded"),
        field(&freed, "appended"),
        "every queued record is written once space is back: {freed}"
    );
    assert!(
        field(&freed, "durable") > field(&full, "durable"),
        "{freed}"
    );
    assert!(
        out.stderr.contains("audit log writes again"),
        "{}",
        out.stderr
    );
}
