//! The image store and slivers' disks through the daemon, without booting a guest: imports
//! (streamed, checked, immutable), specs naming images (`vref`, `disk_max`, `keys`) with
//! errors naming the field, the disk each sliver gets, and what deleting leaves.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use e2e::daemon::{Daemon, ResponseExt};
use e2e::run::{run, sha256sum, Outcome};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);

fn image_cli(d: &Daemon, args: &[&str]) -> Outcome {
    let socket = d.socket.to_str().expect("utf8");
    let mut all = vec!["image", "--socket", socket];
    all.extend_from_slice(args);
    run(&all, TIMEOUT)
}

/// An ed25519 public key line (generated, so the test holds only public material).
fn public_key(dir: &Path, name: &str) -> String {
    let key = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen (openssh-client)");
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(key.with_extension("pub"))
        .expect("public key")
        .trim()
        .to_string()
}

#[test]
fn images_are_imported_checked_and_kept_while_slivers_use_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(dir.path());
    let image = e2e::guest::ext4_image(dir.path(), "small.ext4", 16);
    let imported = image_cli(&d, &["import", "small", image.to_str().expect("utf8")]);
    assert_eq!(imported.code(), 0, "{imported:?}");
    let lines: Vec<&str> = imported.stdout.lines().collect();
    assert!(
        lines.len() == 2 && lines[0].starts_with("NAME") && lines[1].starts_with("small "),
        "a header and the image: {:?}",
        imported.stdout
    );
    let column_end = |line: &str, field: &str| line.find(field).map(|at| at + field.len());
    assert_eq!(
        column_end(lines[1], " 16777216 "),
        column_end(lines[0], " BYTES "),
        "the size under its heading:\n{}",
        imported.stdout
    );
    let listed = d.call("GET", "/images", None).json();
    assert_eq!(listed[0]["name"], "small");
    assert_eq!(listed[0]["size"], 16 << 20);
    assert_eq!(
        listed[0]["sha256"],
        sha256sum(&image),
        "the store's hash is the file's"
    );
    let stored = dir.path().join("state/images/small.img");
    // Import errors: an existing name, not ext4, not an image upload.
    let again = image_cli(&d, &["import", "small", image.to_str().expect("utf8")]);
    assert_eq!(again.code(), 1);
    assert!(
        again.stderr.contains("409") && again.stderr.contains("exists"),
        "{}",
        again.stderr
    );
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![7u8; 8192]).expect("junk");
    let refused = image_cli(&d, &["import", "junk", junk.to_str().expect("utf8")]);
    assert!(
        refused.stderr.contains("400") && refused.stderr.contains("(field body)"),
        "{}",
        refused.stderr
    );
    let wrong_type = d.call("PUT", "/images/x", Some(json!({"a": 1})));
    assert_eq!(wrong_type.status, 415, "{wrong_type:?}");
    assert_eq!(
        image_cli(&d, &["list"]).stdout.lines().count(),
        2,
        "header and one image"
    );

    // Specs naming images: every error names its field, nothing is defined.
    let kernel = dir.path().join("k");
    std::fs::write(&kernel, b"\x7fELF").expect("kernel");
    let key = public_key(dir.path(), "k1");
    let spec = |extra: serde_json::Value| {
        let mut s = json!({"slice": "s", "kernel": kernel, "vref": "small", "disk_max": 32768,
                           "keys": [key]});
        for (k, v) in extra.as_object().expect("object") {
            s[k] = v.clone();
        }
        s
    };
    for (extra, field) in [
        (json!({"vref": "nope"}), "vref"),
        (json!({"disk_max": 1000}), "disk_max"),
        (json!({"keys": ["ssh-ed25519 not-base64!"]}), "keys[0]"),
        (
            json!({"keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcb"]}),
            "keys[0]",
        ),
        (
            json!({"keys": [key.replace("ssh-ed25519", "ssh-rsa")]}),
            "keys[0]",
        ),
        (json!({"keys": vec![key.clone(); 17]}), "keys"),
        (json!({"keys": [1]}), "keys[0]"),
        (json!({"initrd": kernel}), "initrd"),
    ] {
        let r = d.call("PUT", "/slivers/s1", Some(spec(extra.clone())));
        assert_eq!(r.status, 400, "{extra}: {r:?}");
        assert_eq!(r.json()["field"], field, "{extra}: {r:?}");
    }
    assert_eq!(d.call("GET", "/slivers", None).json(), json!([]));

    // A good one: its disk is a copy grown to disk_max, its file system too.
    let r = d.call("PUT", "/slivers/s1", Some(spec(json!({}))));
    assert_eq!(r.status, 201, "{r:?}");
    let view = r.json();
    assert_eq!(view["disk"]["vref"], "small");
    assert_eq!(view["disk"]["disk_max"], 32768);
    assert!(view["ssh"].is_null(), "no network, no ssh: {view}");
    let disk = dir.path().join("state/disks/s1.ext4");
    assert_eq!(std::fs::metadata(&disk).expect("disk").len(), 32768 * 1024);
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&disk)
        .output()
        .expect("dumpe2fs");
    let header = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> u64 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {header}"))
    };
    assert_eq!(
        field("Block count:") * field("Block size:"),
        32768 * 1024,
        "the file system fills the disk"
    );
    // The image is never written, and cannot go while a sliver names it.
    let in_use = image_cli(&d, &["delete", "small"]);
    assert!(
        in_use.stderr.contains("409") && in_use.stderr.contains("s1"),
        "{}",
        in_use.stderr
    );
    assert_eq!(d.call("DELETE", "/slivers/s1", None).status, 204);
    assert!(!disk.exists(), "the sliver's disk went with it");
    assert_eq!(
        sha256sum(&stored),
        sha256sum(&image),
        "the stored image never changed"
    );
    assert_eq!(image_cli(&d, &["delete", "small"]).code(), 0);
    assert!(!stored.exists());
    d.stop();
}
