//! Slivers isolated from the node and from each other: under the daemon every VMM runs as
//! its own unprivileged id with no capabilities, no_new_privs and a seccomp filter, as PID 1
//! of its own PID namespace, with a root that holds only its own files (the other sliver's
//! disk is not there); a forbidden system call ends the sliver with `seccomp: syscall NAME`;
//! a VMM beyond its memory allowance ends with `out of memory`. Tiny guests that halt forever
//! are the slivers (what is tested is the VMM around them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use e2e::daemon::{wait_for_state, Daemon, ResponseExt};
use e2e::netns::NetNs;
use serde_json::{json, Value};

/// `/proc/PID/status` as field → value.
fn status(pid: u64) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// The jailed VMM: the only child of the keeper the daemon started (forked right after the
/// keeper starts, so waited for).
fn vmm_of(keeper: u64) -> u64 {
    let start = std::time::Instant::now();
    loop {
        let children = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children"))
            .unwrap_or_default();
        let pids: Vec<u64> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        // Its seccomp filter is in place once the VM runs: wait for that too.
        if let [vmm] = pids[..] {
            if status(vmm).get("Seccomp").is_some_and(|s| s == "2") {
                return vmm;
            }
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "keeper {keeper} has children {pids:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every file and directory under `root` (not following links, not into `proc`), as paths
/// relative to it.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            if rel == Path::new("proc") {
                continue;
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path);
            }
            out.insert(rel);
        }
    }
    out
}

fn spec(kernel: &Path, extra: Value) -> Value {
    let mut s = json!({"slice": "pl_jail", "kernel": kernel, "mem_mib": 16,
                       "vref": "small", "disk_max": 32768});
    for (k, v) in extra.as_object().expect("object") {
        s[k] = v.clone();
    }
    s
}

#[test]
fn vmms_run_jailed_unprivileged_filtered_and_see_only_their_own_files() {
    let dir = tempfile::tempdir().expect("tmp");
    let dir_path = std::fs::canonicalize(dir.path()).expect("canonical");
    let kernel = e2e::tiny_guest::Program::new()
        .halt_forever()
        .write_elf(&dir_path, "halt.elf");
    let d = Daemon::start(&dir_path);
    let health = d.call("GET", "/healthz", None).json();
    assert!(
        health["protections"]["jail"]
            .as_str()
            .is_some_and(|j| j.starts_with("on")),
        "{health}"
    );
    assert_eq!(health["protections"]["seccomp"], "kill", "{health}");
    let image = e2e::guest::ext4_image(&dir_path, "small.ext4", 16);
    let socket = d.socket.to_str().expect("utf8");
    let imported = e2e::run::run(
        [
            "image",
            "--socket",
            socket,
            "import",
            "small",
            image.to_str().expect("utf8"),
        ],
        std::time::Duration::from_secs(60),
    );
    assert_eq!(imported.code(), 0, "{imported:?}");
    let net = json!({"net": {"ipv4": "10.9.7.2/30", "host_ipv4": "10.9.7.1"}});
    for (name, extra) in [("a", net), ("b", json!({}))] {
        let r = d.call(
            "PUT",
            &format!("/slivers/{name}"),
            Some(spec(&kernel, extra)),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let mut vmms = Vec::new();
    for name in ["a", "b"] {
        let started = d.call("POST", &format!("/slivers/{name}/start"), None);
        assert_eq!(started.status, 200, "{}", started.body);
        let keeper = started.json()["pid"].as_u64().expect("pid");
        vmms.push((name, keeper, vmm_of(keeper)));
    }
    let mut uids = BTreeSet::new();
    for &(name, keeper, vmm) in &vmms {
        let s = status(vmm);
        let uid: Vec<&str> = s["Uid"].split_whitespace().collect();
        assert!(
            uid.iter().all(|u| *u != "0" && *u == uid[0]),
            "{name}: {s:?}"
        );
        assert_eq!(s["Gid"].split_whitespace().next(), Some(uid[0]), "{name}");
        assert_eq!(s["Groups"], "", "{name}: no supplementary groups");
        assert_eq!(s["CapEff"], "0000000000000000", "{name}");
        assert_eq!(s["CapPrm"], "0000000000000000", "{name}");
        assert_eq!(s["CapBnd"], "0000000000000000", "{name}");
        assert_eq!(s["NoNewPrivs"], "1", "{name}");
        assert_eq!(s["Seccomp"], "2", "{name}: filter mode");
        // PID 1 of its own PID namespace.
        assert_eq!(s["NSpid"].split_whitespace().last(), Some("1"), "{name}");
        uids.insert(uid[0].to_string());
        // The keeper dropped its ids too.
        let k = status(keeper);
        assert_eq!(k["Uid"].split_whitespace().next(), Some(uid[0]), "{name}");
        assert_eq!(k["CapEff"], "0000000000000000", "{name} keeper");
        assert_eq!(k["NoNewPrivs"], "1", "{name} keeper");
        assert_eq!(k["Seccomp"], "2", "{name} keeper: its own filter");
        // Its own mount and IPC namespaces.
        for ns in ["mnt", "ipc", "pid", "net"] {
            let mine = std::fs::read_link(format!("/proc/{vmm}/ns/{ns}")).expect("ns");
            let host = std::fs::read_link(format!("/proc/self/ns/{ns}")).expect("ns");
            assert_ne!(mine, host, "{name}: {ns} namespace");
        }
    }
    assert_eq!(uids.len(), 2, "each sliver has its own id: {uids:?}");

    // What sliver a's VMM sees: its kernel, its own run and audit directories and disks,
    // three device nodes, and nothing of b or the rest of the host.
    let (_, _, vmm_a) = vmms[0];
    let root = PathBuf::from(format!("/proc/{vmm_a}/root"));
    let seen = tree(&root);
    let state = dir_path.join("state");
    let rel = |p: &Path| p.strip_prefix("/").expect("absolute").to_path_buf();
    let allowed: Vec<PathBuf> = vec![
        rel(&kernel),
        rel(&state.join("run/a")),
        rel(&state.join("audit/a")),
        rel(&state.join("disks/a.ext4")),
        rel(&state.join("disks/a.cidata.img")),
        PathBuf::from("dev/null"),
        PathBuf::from("dev/zero"),
        PathBuf::from("dev/urandom"),
        PathBuf::from("sys/module/kvm_pvm/parameters/pvm_native"),
    ];
    for path in &seen {
        let ok = allowed
            .iter()
            .any(|a| path.starts_with(a) || a.starts_with(path));
        assert!(ok, "a's VMM sees {}: {seen:#?}", path.display());
    }
    assert!(
        seen.contains(&rel(&state.join("run/a/exit.json"))),
        "{seen:#?}"
    );
    for other in [
        "disks/b.ext4",
        "run/b",
        "audit/b",
        "images/small.img",
        "shaper.ledger",
    ] {
        assert!(
            !root.join(rel(&state.join(other))).exists(),
            "a's VMM reaches {other}"
        );
    }
    assert!(!root.join("dev/kvm").exists() && !root.join("dev/net/tun").exists());
    assert!(!root.join("etc/passwd").exists() && !root.join("bin").exists());

    // A keeper killed outright takes its VMM with it (PR_SET_PDEATHSIG, armed again after
    // the ids changed): nothing of sliver b runs on.
    let (_, keeper_b, vmm_b) = vmms[1];
    // SAFETY: kill(2) of the keeper, a process of this test's daemon.
    unsafe { libc::kill(keeper_b as libc::pid_t, libc::SIGKILL) };
    let view = wait_for_state(&d, "b", "failed");
    assert_eq!(view["exit_reason"], "VMM killed by signal 9", "{view}");
    let start = std::time::Instant::now();
    while std::path::Path::new(&format!("/proc/{vmm_b}")).exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "b's VMM {vmm_b} outlived its keeper"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The keeper passes the stop on (SIGTERM: a tiny guest cannot power off) and ends as the
    // VMM did: an orderly stop, not a failure.
    let stopped = d.call("POST", "/slivers/a/stop", None);
    assert_eq!(stopped.status, 200, "{}", stopped.body);
    let view = stopped.json();
    assert_eq!(view["state"], "stopped", "{view}");
    assert_eq!(view["exit_reason"], "stopped by SIGTERM", "{view}");
    for name in ["a", "b"] {
        let deleted = d.call("DELETE", &format!("/slivers/{name}"), None);
        assert_eq!(deleted.status, 204, "{}", deleted.body);
    }
    d.stop();
}

/// A daemon whose VMMs misbehave as `trigger` says (`vmm::test_trigger`), one sliver on it
/// started; returns the sliver's view once it has failed.
fn fail_with(trigger: &str) -> Value {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = e2e::tiny_guest::Program::new()
        .halt_forever()
        .write_elf(dir.path(), "halt.elf");
    let d = Daemon::start_with_env(
        dir.path(),
        Arc::new(NetNs::new("svjail")),
        &["--guest-stop-timeout", "1"],
        &[("SLICEVISOR_TEST_TRIGGER", trigger)],
    );
    let spec = json!({"slice": "pl_jail", "kernel": kernel, "mem_mib": 16});
    assert_eq!(d.call("PUT", "/slivers/t", Some(spec)).status, 201);
    let started = d.call("POST", "/slivers/t/start", None);
    assert_eq!(started.status, 200, "{}", started.body);
    let view = wait_for_state(&d, "t", "failed");
    assert_eq!(d.call("DELETE", "/slivers/t", None).status, 204);
    d.stop();
    view
}

#[test]
fn a_forbidden_system_call_ends_the_sliver_with_the_seccomp_reason() {
    let view = fail_with("seccomp");
    assert_eq!(view["exit_reason"], "seccomp: syscall getppid", "{view}");
}

#[test]
fn a_vmm_beyond_its_memory_allowance_ends_out_of_memory() {
    let view = fail_with("oom");
    assert_eq!(view["exit_reason"], "out of memory", "{view}");
}

/// `slicevisor run --jail` by hand: the kernel and the exit file in one directory (which the
/// jail shows read-write, for the exit file) come out unharmed, and the VM ends as it would
/// unjailed.
#[test]
fn slicevisor_run_by_hand_can_be_jailed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let kernel = e2e::tiny_guest::Program::new()
        .print("jailed\n")
        .reset()
        .write_elf(dir.path(), "tiny.elf");
    let before = e2e::run::sha256sum(&kernel);
    let exit_file = dir.path().join("exit.json");
    let out = e2e::run::run(
        [
            "run",
            "--kernel",
            kernel.to_str().expect("utf8"),
            "--mem-mib",
            "16",
            "--jail",
            "965001:965001",
            "--exit-file",
            exit_file.to_str().expect("utf8"),
        ],
        std::time::Duration::from_secs(30),
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(out.stdout.contains("jailed"), "{out:?}");
    assert_eq!(
        e2e::run::sha256sum(&kernel),
        before,
        "the kernel file changed"
    );
    let record: Value =
        serde_json::from_str(std::fs::read_to_string(&exit_file).expect("exit").trim())
            .expect("json");
    assert_eq!(record["code"], 0, "{record}");
    assert_eq!(record["reason"], "guest powered off", "{record}");
}
