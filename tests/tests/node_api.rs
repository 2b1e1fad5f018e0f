//! The node daemon's API against a real `slicevisor node` on a temporary socket: lifecycle of
//! sliver definitions, bad input, 32 concurrent clients, restarts, socket permissions.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use e2e::daemon::{pid_alive, request, wait_for_state, Daemon, ResponseExt};
use e2e::run::slicevisor_bin;
use serde_json::{json, Value};

fn kernel_file(dir: &Path) -> PathBuf {
    let k = dir.join("vmlinux");
    std::fs::write(&k, b"not booted by these tests").expect("kernel");
    k
}

fn spec(kernel: &Path, third_octet: u8) -> Value {
    json!({
        "slice": "princeton_codeen",
        "kernel": kernel,
        "mem_mib": 64,
        "net": {"ipv4": format!("10.9.{third_octet}.2/24"), "host_ipv4": format!("10.9.{third_octet}.1"),
                "net_share": 2, "net_max_rate": 10_000_000}
    })
}

#[test]
fn define_inspect_patch_and_delete_slivers() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(dir.path());
    let d = Daemon::start(dir.path());
    let health = d.call("GET", "/healthz", None).json();
    assert_eq!(health["status"], "ok");
    assert!(health["protections"]["cgroups"].is_string(), "{health}");

    let r = d.call("PUT", "/slivers/web-1", Some(spec(&k, 1)));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.json()["state"], "created");
    assert_eq!(
        d.call("PUT", "/slivers/web-1", Some(spec(&k, 1))).status,
        200,
        "idempotent"
    );
    let r = d.call("PUT", "/slivers/web-1", Some(spec(&k, 2)));
    assert_eq!((r.status, r.json()["field"].clone()), (409, json!("name")));
    assert_eq!(d.call("PUT", "/slivers/db", Some(spec(&k, 3))).status, 201);
    // The daemon made the sliver's TAP, with the host address, up, inside its namespace.
    let addr =
        d.ns.command("ip")
            .args(["-br", "addr", "show", "dev", "sv-db"])
            .output()
            .expect("ip");
    let addr = String::from_utf8_lossy(&addr.stdout);
    assert!(addr.contains("10.9.3.1/24"), "{addr}");
    assert!(
        addr.contains("UP") || addr.contains("UNKNOWN") || addr.contains("DOWN"),
        "{addr}"
    );
    let link =
        d.ns.command("ip")
            .args(["-o", "link", "show", "dev", "sv-db"])
            .output()
            .expect("ip");
    assert!(
        String::from_utf8_lossy(&link.stdout).contains(",UP"),
        "link up"
    );

    let list = d.call("GET", "/slivers", None).json();
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["db", "web-1"]);
    let one = d.call("GET", "/slivers/web-1", None).json();
    assert_eq!(one["spec"]["net"]["net_share"], 2);

    let r = d.call(
        "PATCH",
        "/slivers/web-1",
        Some(json!({"net_share": 5, "net_min_rate": 1000})),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["spec"]["net"]["net_share"], 5);
    assert_eq!(
        d.call("GET", "/slivers/web-1", None).json()["spec"]["net"]["net_min_rate"],
        1000
    );

    let metrics = d.call("GET", "/metrics", None);
    assert!(
        metrics
            .body
            .contains("slicevisor_slivers{state=\"created\"} 2"),
        "{}",
        metrics.body
    );

    // curl works as README shows.
    let curl = std::process::Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&d.socket)
        .arg("http://node/slivers/db")
        .output()
        .expect("curl");
    assert!(curl.status.success());
    assert!(String::from_utf8_lossy(&curl.stdout).contains("\"name\":\"db\""));

    assert_eq!(d.call("DELETE", "/slivers/web-1", None).status, 204);
    assert_eq!(d.call("GET", "/slivers/web-1", None).status, 404);
    let gone =
        d.ns.command("ip")
            .args(["link", "show", "dev", "sv-web-1"])
            .output()
            .expect("ip");
    assert!(!gone.status.success(), "TAP removed on delete");
    assert_eq!(d.call("DELETE", "/slivers/web-1", None).status, 404);
    let stderr = d.stop();
    assert!(
        stderr.contains("uid Some(0) created sliver web-1"),
        "peer uid logged: {stderr}"
    );
}

#[test]
fn bad_input_gets_a_json_error_naming_the_field_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(dir.path());
    let d = Daemon::start(dir.path());
    assert_eq!(
        d.call("PUT", "/slivers/keep", Some(spec(&k, 1))).status,
        201
    );
    // What the requests must not change: the definitions and states (the live shaping and
    // counter figures move on their own).
    let definitions = |body: &str| {
        let mut v: Value = serde_json::from_str(body).expect("list JSON");
        for s in v.as_array_mut().expect("list") {
            if let Some(o) = s.as_object_mut() {
                o.remove("shaping");
                o.remove("counters");
            }
        }
        v
    };
    let before = definitions(&d.call("GET", "/slivers", None).body);

    let with = |f: &dyn Fn(&mut Value)| {
        let mut s = spec(&k, 7);
        f(&mut s);
        s.to_string().into_bytes()
    };
    /// method, path, body, expected status, expected field
    type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("PUT", "/slivers/Bad_Name", with(&|_| {}), 400, Some("name")),
        (
            "PUT",
            "/slivers/x",
            with(&|s| s["colour"] = json!("red")),
            400,
            Some("colour"),
        ),
        (
            "PUT",
            "/slivers/x",
            with(&|s| s["vcpus"] = json!("two")),
            400,
            Some("vcpus"),
        ),
        (
            "PUT",
            "/slivers/x",
            with(&|s| s["kernel"] = json!("/nonexistent/vmlinux")),
            400,
            Some("kernel"),
        ),
        (
            "PUT",
            "/slivers/x",
            with(&|s| s["net"]["net_max_rate"] = json!(-1)),
            400,
            Some("net.net_max_rate"),
        ),
        (
            "PUT",
            "/slivers/x",
            with(&|s| s["net"]["net_max_rate"] = json!(1u64 << 60)),
            400,
            Some("net.net_max_rate"),
        ),
        (
            "PUT",
            "/slivers/x",
            with(&|s| s["mem_mib"] = json!(0)),
            400,
            Some("mem_mib"),
        ),
        (
            "PUT",
            "/slivers/x",
            b"{\"slice\": \"s\", \"kern".to_vec(),
            400,
            None,
        ),
        ("PUT", "/slivers/x", b"not json".to_vec(), 400, None),
        ("PUT", "/slivers/x", vec![b' '; 70 * 1024], 413, None),
        (
            "PATCH",
            "/slivers/keep",
            json!({"net_share": 0}).to_string().into_bytes(),
            400,
            Some("net.net_share"),
        ),
        (
            "PATCH",
            "/slivers/keep",
            json!({"speed": 1}).to_string().into_bytes(),
            400,
            Some("speed"),
        ),
        (
            "PATCH",
            "/slivers/nope",
            json!({"net_share": 2}).to_string().into_bytes(),
            404,
            None,
        ),
        ("GET", "/no/such/route", Vec::new(), 404, None),
        ("POST", "/slivers", Vec::new(), 405, None),
    ];
    for (method, path, body, status, field) in cases {
        let r = request(&d.socket, method, path, Some(&body));
        assert_eq!(r.status, status, "{method} {path}: {r:?}");
        let v = r.json();
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {v}"
        );
        if let Some(field) = field {
            assert_eq!(v["field"], json!(field), "{method} {path}: {v}");
        }
    }
    assert_eq!(
        definitions(&d.call("GET", "/slivers", None).body),
        before,
        "state changed"
    );
    d.stop();
}

#[test]
fn thirty_two_clients_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(dir.path());
    let d = Daemon::start(dir.path());
    let socket = d.socket.clone();
    let threads: Vec<_> = (0..32u8)
        .map(|i| {
            let socket = socket.clone();
            let body = spec(&k, i).to_string().into_bytes();
            std::thread::spawn(move || {
                let name = format!("s-{i}");
                let path = format!("/slivers/{name}");
                let r = request(&socket, "PUT", &path, Some(&body));
                assert_eq!(r.status, 201, "{r:?}");
                for _ in 0..5 {
                    assert_eq!(request(&socket, "GET", "/slivers", None).status, 200);
                    assert_eq!(request(&socket, "GET", &path, None).status, 200);
                }
                let patch = json!({"net_share": u32::from(i) + 1})
                    .to_string()
                    .into_bytes();
                assert_eq!(request(&socket, "PATCH", &path, Some(&patch)).status, 200);
                if i % 2 == 0 {
                    assert_eq!(request(&socket, "DELETE", &path, None).status, 204);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let list = d.call("GET", "/slivers", None).json();
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 16);
    for s in list {
        let i: u32 = s["name"].as_str().expect("name")[2..]
            .parse()
            .expect("index");
        assert_eq!(i % 2, 1);
        assert_eq!(s["spec"]["net"]["net_share"], json!(i + 1));
    }
    d.stop();
}

#[test]
fn slivers_survive_restarts_and_a_killed_daemon() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(dir.path());
    let d = Daemon::start(dir.path());
    let mode = std::fs::metadata(&d.socket)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    assert_eq!(d.call("PUT", "/slivers/a", Some(spec(&k, 1))).status, 201);
    assert_eq!(d.call("PUT", "/slivers/b", Some(spec(&k, 2))).status, 201);
    let ns = d.ns.clone();
    d.stop();

    let d = Daemon::start_in(dir.path(), ns.clone());
    assert_eq!(
        d.call("GET", "/slivers", None)
            .json()
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    // SIGKILL leaves the socket file behind; the next daemon clears it.
    let socket = d.socket.clone();
    d.kill();
    assert!(socket.exists());
    let d = Daemon::start_in(dir.path(), ns);
    assert_eq!(d.call("GET", "/slivers/b", None).status, 200);
    // A second daemon on the same socket refuses to start.
    let second = std::process::Command::new(slicevisor_bin())
        .args(["node", "--socket"])
        .arg(&d.socket)
        .arg("--state-dir")
        .arg(dir.path().join("state2"))
        .output()
        .expect("second daemon");
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another daemon is serving"));
    d.stop();
}

#[test]
fn the_socket_directory_is_made_if_missing() {
    let dir = tempfile::tempdir().expect("tmp");
    let socket = dir.path().join("run/slicevisor/node.sock");
    let ns = e2e::netns::NetNs::new("svsockdir");
    let daemon = ns
        .command_keeping_mounts(slicevisor_bin())
        .args(["node", "--socket"])
        .arg(&socket)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("daemon");
    let guard = e2e::run::ChildGuard::new(daemon);
    let start = std::time::Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "no daemon on {}",
            socket.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(request(&socket, "GET", "/slivers", None).status, 200);
    drop(guard);
    e2e::daemon::tidy_cgroups_of(dir.path());
}

#[test]
fn a_daemon_without_its_vmm_binary_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let lone = dir.path().join("slicevisor");
    // A hard link holds no open file (a copy's fd, inherited by a child another test forks
    // at that moment, would make exec fail with ETXTBSY); copy across file systems.
    if std::fs::hard_link(slicevisor_bin(), &lone).is_err() {
        std::fs::copy(slicevisor_bin(), &lone).expect("copying slicevisor alone");
    }
    let mut attempts = 0;
    let child = loop {
        let spawned = std::process::Command::new(&lone)
            .args(["node", "--socket"])
            .arg(dir.path().join("node.sock"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        match spawned {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.expect("daemon"),
        }
    };
    let out = e2e::run::wait_with_timeout(child, std::time::Duration::from_secs(20));
    assert_eq!(out.code(), 1);
    let missing = dir.path().join("slicevisor-vmm");
    assert!(
        out.stderr
            .contains(&format!("{}: the VMM binary is missing", missing.display())),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join("state").exists(), "nothing created");
}

#[test]
fn vmm_processes_are_started_watched_stopped_and_readopted() {
    let dir = tempfile::tempdir().expect("tmp");
    let halt = e2e::tiny_guest::Program::new()
        .halt_forever()
        .write_elf(dir.path(), "halt.elf");
    let off = e2e::tiny_guest::Program::new()
        .reset()
        .write_elf(dir.path(), "off.elf");
    let tiny = |k: &Path| json!({"slice": "s", "kernel": k, "mem_mib": 16});
    let d = Daemon::start(dir.path());

    // Start and stop.
    assert_eq!(d.call("PUT", "/slivers/a", Some(tiny(&halt))).status, 201);
    let r = d.call("POST", "/slivers/a/start", None);
    assert_eq!(r.status, 200, "{r:?}");
    let pid = r.json()["pid"].as_u64().expect("pid");
    assert_eq!(r.json()["state"], "running");
    assert!(pid_alive(pid));
    // It is the VMM-only binary beside the daemon's, with `slicevisor run`'s arguments.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("VMM's exe");
    assert_eq!(exe, slicevisor_bin().with_file_name("slicevisor-vmm"));
    // Handed the CPUID table the daemon asked KVM for once: a vCPU gets from it what it gets
    // from KVM's answer now (which names the host CPU it ran on in the APIC id fields, which
    // the vCPU's own id replaces).
    let table = dir
        .path()
        .join("state")
        .join(vmm::arch::cpuid_table::FILE_NAME);
    let args = std::fs::read(format!("/proc/{pid}/cmdline")).expect("VMM's arguments");
    let args: Vec<&[u8]> = args.split(|&b| b == 0).collect();
    let at = args
        .iter()
        .position(|a| *a == b"--supported-cpuid")
        .expect("--supported-cpuid given");
    assert_eq!(args[at + 1], table.as_os_str().as_encoded_bytes());
    let now = dir.path().join("cpuid-now");
    vmm::arch::cpuid_table::save(&now).expect("ask KVM now");
    let vcpu = |t| {
        let table = vmm::arch::cpuid_table::load(t).expect("a saved table");
        vmm::arch::cpuid::for_vcpu(&table, 0, 1, false)
    };
    assert_eq!(vcpu(&table), vcpu(&now));
    assert_eq!(
        d.call("POST", "/slivers/a/start", None).status,
        409,
        "already running"
    );
    let r = d.call("POST", "/slivers/a/stop", None).json();
    assert_eq!(r["state"], "stopped", "{r}");
    assert_eq!(r["exit_reason"], "stopped by SIGTERM");
    assert!(r["pid"].is_null());
    assert!(!pid_alive(pid), "VMM reaped, no zombie");

    // The guest powers off by itself: noticed and recorded.
    assert_eq!(d.call("PUT", "/slivers/b", Some(tiny(&off))).status, 201);
    assert_eq!(d.call("POST", "/slivers/b/start", None).status, 200);
    let b = wait_for_state(&d, "b", "stopped");
    assert_eq!(b["exit_reason"], "guest powered off");

    // A VMM killed with SIGKILL shows failed with its reason. (Its daemon's CPUID table is
    // gone meanwhile: it runs all the same, asking KVM itself.)
    assert_eq!(d.call("PUT", "/slivers/c", Some(tiny(&halt))).status, 201);
    std::fs::remove_file(&table).expect("remove the saved table");
    let pid = d.call("POST", "/slivers/c/start", None).json()["pid"]
        .as_u64()
        .expect("pid");
    let args = std::fs::read(format!("/proc/{pid}/cmdline")).expect("VMM's arguments");
    assert!(
        !args.split(|&b| b == 0).any(|a| a == b"--supported-cpuid"),
        "no table to hand over"
    );
    // SAFETY: killing the VMM the daemon started for this test.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    let c = wait_for_state(&d, "c", "failed");
    assert_eq!(c["exit_reason"], "VMM killed by signal 9");

    // A daemon restart re-adopts a running VMM instead of orphaning or duplicating it.
    assert_eq!(d.call("PUT", "/slivers/e", Some(tiny(&halt))).status, 201);
    let pid = d.call("POST", "/slivers/e/start", None).json()["pid"]
        .as_u64()
        .expect("pid");
    d.stop_keeping_vmms();
    assert!(pid_alive(pid), "the VMM outlives the daemon");
    let d = Daemon::start(dir.path());
    let e = d.call("GET", "/slivers/e", None).json();
    assert_eq!(
        (e["state"].clone(), e["pid"].as_u64()),
        (json!("running"), Some(pid))
    );
    let e = d.call("POST", "/slivers/e/stop", None).json();
    assert_eq!(e["state"], "stopped", "{e}");
    assert_eq!(e["exit_reason"], "stopped by SIGTERM");

    // Deleting a running sliver stops it first, and releases its capture ring (its flow
    // records stay, under the audit retention policy).
    let pid = d.call("POST", "/slivers/a/start", None).json()["pid"]
        .as_u64()
        .expect("pid");
    let audit = audit_store::sliver_dir(&dir.path().join("state"), "a");
    let ring = audit.join(audit_store::capture::RING_FILE);
    let start = std::time::Instant::now();
    while !ring.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "no ring"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(d.call("DELETE", "/slivers/a", None).status, 204);
    assert!(!pid_alive(pid));
    assert_eq!(d.call("GET", "/slivers/a", None).status, 404);
    assert!(!ring.exists(), "the capture ring goes with the sliver");
    assert!(audit.join("LOCK").exists(), "the flow log stays");
    d.stop();
}

fn ctl(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(slicevisor_bin())
        .args(["ctl", "--socket"])
        .arg(socket)
        .args(args)
        .output()
        .expect("ctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn ctl_client_drives_every_route() {
    let dir = tempfile::tempdir().expect("tmp");
    let halt = e2e::tiny_guest::Program::new()
        .halt_forever()
        .write_elf(dir.path(), "halt.elf");
    let spec_file = dir.path().join("spec.json");
    let mut s = spec(&halt, 5);
    s["mem_mib"] = json!(16);
    std::fs::write(&spec_file, s.to_string()).expect("spec");
    let d = Daemon::start(dir.path());
    let sock = d.socket.clone();
    let spec_arg = spec_file.to_str().expect("utf8");

    assert_eq!(ctl(&sock, &["health"]).1.trim(), "ok");
    let (code, out, _) = ctl(&sock, &["create", "cli-1", "--spec", spec_arg]);
    assert_eq!(code, 0);
    assert!(out.contains("state        created"), "{out}");
    let (code, out, _) = ctl(&sock, &["list"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("NAME"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("cli-1") && l.contains("created")),
        "{out}"
    );
    let (code, out, _) = ctl(
        &sock,
        &[
            "--json",
            "limits",
            "cli-1",
            "--share",
            "4",
            "--max-rate",
            "5000000",
        ],
    );
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        (
            v["spec"]["net"]["net_share"].clone(),
            v["spec"]["net"]["net_max_rate"].clone()
        ),
        (json!(4), json!(5_000_000))
    );
    let (code, out, _) = ctl(&sock, &["start", "cli-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("state        running"), "{out}");
    let (code, out, _) = ctl(&sock, &["--json", "show", "cli-1"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["state"],
        "running"
    );
    assert!(ctl(&sock, &["metrics"])
        .1
        .contains("slicevisor_sliver_tx_bytes_total{sliver=\"cli-1\""));
    let (code, out, _) = ctl(&sock, &["stop", "cli-1"]);
    assert_eq!(code, 0);
    assert!(out.contains("stopped by SIGTERM"), "{out}");
    assert_eq!(ctl(&sock, &["delete", "cli-1"]).0, 0);

    // Errors: the daemon's message and field, exit code 1.
    let (code, _, err) = ctl(&sock, &["limits", "nope", "--share", "2"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("404") && err.contains("no sliver named"),
        "{err}"
    );
    let (code, _, err) = ctl(&sock, &["create", "cli-2", "--spec", "/nonexistent.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("--spec /nonexistent.json"), "{err}");
    std::fs::write(&spec_file, "{\"slice\": 5}").expect("bad spec");
    let (code, _, err) = ctl(&sock, &["create", "cli-2", "--spec", spec_arg]);
    assert_eq!(code, 1);
    assert!(err.contains("(field slice)"), "{err}");
    let (code, _, err) = ctl(Path::new("/nonexistent.sock"), &["list"]);
    assert_eq!(code, 1);
    assert!(err.contains("--socket /nonexistent.sock"), "{err}");
    d.stop();
}

#[test]
fn ctl_checks_its_arguments_and_gives_up_on_a_mute_socket() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(dir.path());
    let d = Daemon::start(dir.path());
    let sock = d.socket.clone();
    assert_eq!(
        d.call("PUT", "/slivers/victim", Some(spec(&k, 1))).status,
        201
    );
    // Names that would address another resource, or smuggle a second request, are refused
    // before anything is sent.
    for name in [
        "victim?x=1",
        "victim#x",
        "victim\r\nDELETE /slivers/victim HTTP/1.1",
        "../victim",
    ] {
        let (code, _, err) = ctl(&sock, &["delete", name]);
        assert_eq!(code, 1, "{name:?}");
        assert!(err.contains("is not a sliver name"), "{name:?}: {err}");
    }
    assert_eq!(
        d.call("GET", "/slivers/victim", None).status,
        200,
        "victim untouched"
    );
    // A spec that never ends is read only up to the limit.
    let start = std::time::Instant::now();
    let (code, _, err) = ctl(&sock, &["create", "x", "--spec", "/dev/zero"]);
    assert_eq!(code, 1);
    assert!(err.contains("longer than the 65536 bytes"), "{err}");
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    // A socket that accepts and never answers: a clear message, not a minute's wait.
    let mute = dir.path().join("mute.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&mute).expect("bind");
    let start = std::time::Instant::now();
    let (code, _, err) = ctl(&mute, &["--timeout", "1", "list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no answer within 1s (waiting for the reply)"),
        "{err}"
    );
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    d.stop();
}
