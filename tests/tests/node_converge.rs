//! The node daemon converges: whatever point a crash (SIGKILL) cut an operation at, the
//! restarted daemon makes the host match its records before it answers, and every
//! acknowledged operation's effect is there. Real daemons, tiny guests, TAPs in a namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::daemon::{host_state, pid_alive, wait_for_state, Daemon, HostState, ResponseExt};
use e2e::netns::NetNs;
use node_daemon::state::{SliverRecord, SliverState, StateDir};
use serde_json::{json, Value};

fn halt_kernel(dir: &Path) -> PathBuf {
    e2e::tiny_guest::Program::new()
        .halt_forever()
        .write_elf(dir, "halt.elf")
}

/// A tiny guest on a TAP in 10.31.`octet`.0/24.
fn spec(kernel: &Path, octet: u8) -> Value {
    json!({
        "slice": "pl_converge",
        "kernel": kernel,
        "mem_mib": 16,
        "net": {"ipv4": format!("10.31.{octet}.2/24"), "host_ipv4": format!("10.31.{octet}.1")}
    })
}

fn state_dir(dir: &Path) -> PathBuf {
    dir.join("state")
}

/// Change sliver `name`'s record while no daemon runs, as a crash would have left it.
fn rewrite(dir: &Path, name: &str, f: impl FnOnce(&mut SliverRecord)) {
    let state = StateDir::open(&state_dir(dir)).expect("state dir");
    let mut loaded = state.load_all().expect("load");
    let (_, record) = loaded
        .records
        .iter_mut()
        .find(|(n, _)| n == name)
        .expect("record");
    f(record);
    state.save(name, record).expect("save");
}

/// Everything the host has for the daemon's slivers agrees with what the daemon says, and
/// nothing runs or exists for a sliver it does not have.
fn assert_converged(d: &Daemon, dir: &Path) -> HostState {
    let views: Vec<Value> = d
        .call("GET", "/slivers", None)
        .json()
        .as_array()
        .cloned()
        .expect("list");
    let host = host_state(&d.ns, &state_dir(dir));
    let mut expected_taps = BTreeMap::new();
    for v in &views {
        let name = v["name"].as_str().expect("name");
        if let Some(net) = v["spec"]["net"].as_object() {
            let prefix = net["ipv4"]
                .as_str()
                .expect("ipv4")
                .split('/')
                .nth(1)
                .expect("len");
            expected_taps.insert(
                node_daemon::host_net::tap_name(name),
                vec![format!(
                    "{}/{prefix}",
                    net["host_ipv4"].as_str().expect("host")
                )],
            );
            assert!(host.slots.contains(name), "{name} has no slot: {host:?}");
        }
        let state = v["state"].as_str().expect("state");
        match state {
            "running" => {
                let pid = v["pid"].as_u64().expect("pid");
                assert_eq!(
                    host.vmms.get(name),
                    Some(&vec![u32::try_from(pid).expect("pid")]),
                    "{name}: {v} vs {host:?}"
                );
            }
            "created" | "stopped" | "failed" => {
                assert!(
                    !host.vmms.contains_key(name),
                    "{name} is {state} but runs: {host:?}"
                );
            }
            other => panic!("{name} is still {other} after convergence: {v}"),
        }
    }
    assert_eq!(host.taps, expected_taps, "TAPs vs records");
    let names: Vec<&str> = views.iter().filter_map(|v| v["name"].as_str()).collect();
    for name in host.slots.iter().chain(host.vmms.keys()) {
        assert!(
            names.contains(&name.as_str()),
            "{name} has host state but no record: {host:?}"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(state_dir(dir).join("slivers"))
        .expect("slivers dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    host
}

/// Wait until no sliver is `starting` or `stopping` (finishing an interrupted stop runs in
/// the background after a restart).
fn settle(d: &Daemon) {
    let start = Instant::now();
    loop {
        let list = d.call("GET", "/slivers", None).json();
        let busy = list
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v["state"] == "stopping" || v["state"] == "starting");
        if !busy {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never settled: {list}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_daemon(dir: &Path, ns: Arc<NetNs>) -> Daemon {
    // A tiny guest cannot power off when asked: SIGTERM follows at once.
    Daemon::start_with(dir, ns, &["--guest-stop-timeout", "0"])
}

#[test]
fn each_interrupted_operation_converges_on_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = halt_kernel(dir.path());
    let d = start_daemon(dir.path(), Arc::new(NetNs::new("svconv")));
    for (i, name) in ["a", "b", "d", "e", "f", "g"].iter().enumerate() {
        let octet = u8::try_from(i + 1).expect("octet");
        assert_eq!(
            d.call("PUT", &format!("/slivers/{name}"), Some(spec(&k, octet)))
                .status,
            201
        );
    }
    let pid = |d: &Daemon, name: &str| {
        let r = d.call("POST", &format!("/slivers/{name}/start"), None);
        assert_eq!(r.status, 200, "{r:?}");
        r.json()["pid"].as_u64().expect("pid")
    };
    let (pa, pb, pd, pf) = (pid(&d, "a"), pid(&d, "b"), pid(&d, "d"), pid(&d, "f"));
    let ns = d.kill();

    // a: a start cut off after the spawn, before the record said running.
    rewrite(dir.path(), "a", |r| {
        r.state = SliverState::Starting;
        r.pid = None;
    });
    // b: a delete cut off after its commit (the record is gone), before the teardown.
    StateDir::open(&state_dir(dir.path()))
        .expect("state")
        .remove("b")
        .expect("remove");
    // c: a define cut off after the record, before the TAP.
    let c: SliverRecord = serde_json::from_value(json!({
        "spec": spec(&k, 9), "state": "created"
    }))
    .expect("record");
    let mut c = c;
    c.spec.name = Some("c".into());
    StateDir::open(&state_dir(dir.path()))
        .expect("state")
        .create("c", &c)
        .expect("create");
    // d: a stop cut off after the record said stopping.
    rewrite(dir.path(), "d", |r| r.state = SliverState::Stopping);
    // e: its TAP got a second address (the same name defined once in another subnet).
    let out = ns
        .command("ip")
        .args(["addr", "add", "10.77.0.1/24", "dev", "sv-e"])
        .output()
        .expect("ip");
    assert!(out.status.success(), "{out:?}");
    // f: the record says stopped, but its VMM runs on.
    rewrite(dir.path(), "f", |r| {
        r.state = SliverState::Stopped;
        r.pid = None;
    });
    // g: a start cut off before the spawn: the record says starting, no VMM exists.
    rewrite(dir.path(), "g", |r| r.state = SliverState::Starting);
    // h: a define cut off after the shaper slot was claimed, before the record.
    let ledger =
        vmm::ledger::Ledger::open(&state_dir(dir.path()).join("shaper.ledger")).expect("ledger");
    let limits = node_daemon::shares::slots::Limits {
        share: 1,
        min_rate: 0,
        max_rate: None,
        budget: None,
    };
    node_daemon::shares::slots::assign(&ledger, "h", &limits).expect("slot");

    let d = start_daemon(dir.path(), ns);
    let a = d.call("GET", "/slivers/a", None).json();
    assert_eq!(
        (a["state"].clone(), a["pid"].as_u64()),
        (json!("running"), Some(pa)),
        "{a}"
    );
    assert_eq!(d.call("GET", "/slivers/b", None).status, 404);
    assert!(!pid_alive(pb), "the deleted sliver's VMM is stopped");
    assert_eq!(d.call("PUT", "/slivers/c", Some(spec(&k, 9))).status, 200);
    let d_view = wait_for_state(&d, "d", "stopped");
    assert!(!pid_alive(pd), "{d_view}");
    assert!(!pid_alive(pf), "f's orphan VMM is stopped");
    let g = d.call("GET", "/slivers/g", None).json();
    assert_eq!(
        g["state"], "failed",
        "a start that never spawned has ended: {g}"
    );
    settle(&d);
    let host = assert_converged(&d, dir.path());
    assert!(
        !host.slots.contains("h"),
        "the slot of a definition cut off is released"
    );
    assert_eq!(host.taps["sv-e"], vec!["10.31.4.1/24".to_string()]);
    assert!(!host.taps.contains_key("sv-b"));
    assert_eq!(host.taps["sv-c"], vec!["10.31.9.1/24".to_string()]);
    // An identical definition makes a TAP that went missing while the daemon ran.
    let out =
        d.ns.command("ip")
            .args(["link", "del", "sv-c"])
            .output()
            .expect("ip");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(d.call("PUT", "/slivers/c", Some(spec(&k, 9))).status, 200);
    assert_eq!(
        host_state(&d.ns, &state_dir(dir.path())).taps["sv-c"],
        vec!["10.31.9.1/24".to_string()]
    );
    // The adopted VMM is stopped like any other.
    let a = d.call("POST", "/slivers/a/stop", None).json();
    assert_eq!(a["state"], "stopped", "{a}");
    assert!(!pid_alive(pa));
    d.stop();
}

#[test]
fn an_unreadable_record_keeps_its_sliver_from_the_sweeps() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = halt_kernel(dir.path());
    let d = start_daemon(dir.path(), Arc::new(NetNs::new("svtorn")));
    assert_eq!(d.call("PUT", "/slivers/t", Some(spec(&k, 1))).status, 201);
    let pid = d.call("POST", "/slivers/t/start", None).json()["pid"]
        .as_u64()
        .expect("pid");
    let ns = d.kill();
    // Both slots of its record torn: the daemon cannot tell what t is.
    std::fs::write(state_dir(dir.path()).join("slivers/t.rec"), vec![0x5a; 64]).expect("tear");
    let d = start_daemon(dir.path(), ns);
    assert_eq!(d.call("GET", "/slivers/t", None).status, 404, "not listed");
    let host = host_state(&d.ns, &state_dir(dir.path()));
    assert!(pid_alive(pid), "its VMM is not stopped as a stray");
    assert!(
        host.taps.contains_key("sv-t"),
        "nor its TAP removed: {host:?}"
    );
    assert!(host.slots.contains("t"), "nor its slot released: {host:?}");
    let r = d.call("PUT", "/slivers/t", Some(spec(&k, 1)));
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (409, json!("name")),
        "{r:?}"
    );
    d.stop();
    e2e::daemon::kill_vmms_under(dir.path());
    e2e::daemon::tidy_cgroups_of(dir.path());
}

#[test]
fn a_stop_whose_client_gives_up_still_ends_the_vmm() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = halt_kernel(dir.path());
    let ns = Arc::new(NetNs::new("svcancel"));
    // The guest gets 2 s to power off (a tiny guest never does), then SIGTERM.
    let d = Daemon::start_with(dir.path(), ns, &["--guest-stop-timeout", "2"]);
    assert_eq!(d.call("PUT", "/slivers/s", Some(spec(&k, 1))).status, 201);
    let pid = d.call("POST", "/slivers/s/start", None).json()["pid"]
        .as_u64()
        .expect("pid");
    let gave_up = node_daemon::client::try_request_within(
        &d.socket,
        "POST",
        "/slivers/s/stop",
        None,
        Duration::from_millis(300),
    );
    assert!(gave_up.is_err(), "the client stopped waiting: {gave_up:?}");
    let s = wait_for_state(&d, "s", "stopped");
    assert_eq!(s["exit_reason"], "stopped by SIGTERM", "{s}");
    assert!(!pid_alive(pid));
    d.stop();
}

/// What the test knows a name must be after an acknowledged operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Absent,
    Stopped,
    Running,
    Defined,
}

#[test]
fn random_kills_during_operations_converge() {
    const ROUNDS: usize = 200;
    let dir = tempfile::tempdir().expect("tmp");
    let k = halt_kernel(dir.path());
    let names = ["w", "x", "y", "z"];
    let mut d = start_daemon(dir.path(), Arc::new(NetNs::new("svkill")));
    let mut known: BTreeMap<&str, Known> = names.iter().map(|n| (*n, Known::Absent)).collect();
    let mut rng = fastrand::Rng::with_seed(0x005e_ed11);
    let (mut acked, mut cut) = (0, 0);
    for round in 0..ROUNDS {
        let i = rng.usize(..names.len());
        let name = names[i];
        let octet = u8::try_from(i + 1).expect("octet");
        let (method, path, body) = match rng.u8(..4) {
            0 => ("PUT", format!("/slivers/{name}"), Some(spec(&k, octet))),
            1 => ("POST", format!("/slivers/{name}/start"), None),
            2 => ("POST", format!("/slivers/{name}/stop"), None),
            _ => ("DELETE", format!("/slivers/{name}"), None),
        };
        let socket = d.socket.clone();
        let bytes = body.map(|b| b.to_string().into_bytes());
        let call = std::thread::spawn(move || {
            node_daemon::client::try_request(&socket, method, &path, bytes.as_deref())
        });
        std::thread::sleep(Duration::from_micros(rng.u64(0..15_000)));
        let ns = d.kill();
        let reply = call.join().expect("client thread");
        match reply {
            Ok(r) if (200..300).contains(&r.status) => {
                acked += 1;
                let now = match method {
                    "PUT" if known[name] == Known::Absent => Known::Defined,
                    "PUT" => known[name],
                    "DELETE" => Known::Absent,
                    "POST" if r.json()["state"] == "running" => Known::Running,
                    _ => Known::Stopped,
                };
                known.insert(name, now);
            }
            Ok(r) => assert!(r.status != 500, "round {round}: {method} {name}: {r:?}"),
            Err(_) => {
                cut += 1;
                // Cut off: either outcome is allowed; the restart says which.
                known.insert(name, Known::Defined);
            }
        }
        d = start_daemon(dir.path(), ns);
        settle(&d);
        assert_converged(&d, dir.path());
        for (n, k) in known.clone() {
            let v = d.call("GET", &format!("/slivers/{n}"), None);
            let state = v
                .try_json()
                .ok()
                .and_then(|j| j["state"].as_str().map(str::to_string));
            match k {
                Known::Absent => assert_eq!(v.status, 404, "round {round}: {n} {v:?}"),
                Known::Running => {
                    assert_eq!(
                        state.as_deref(),
                        Some("running"),
                        "round {round}: {n} {v:?}"
                    )
                }
                Known::Stopped => assert!(
                    matches!(state.as_deref(), Some("stopped" | "created" | "failed")),
                    "round {round}: {n} {v:?}"
                ),
                Known::Defined => {}
            }
            // What the restart shows is now known.
            known_from(&mut known, n, v.status, state.as_deref());
        }
    }
    eprintln!("{ROUNDS} kills: {acked} operations acknowledged before the kill, {cut} cut off");
    assert!(
        acked > 10 && cut > 10,
        "kills landed on both sides: {acked} / {cut}"
    );
    d.stop();
}

fn known_from(known: &mut BTreeMap<&str, Known>, name: &str, status: u16, state: Option<&str>) {
    let k = match (status, state) {
        (404, _) => Known::Absent,
        (_, Some("running")) => Known::Running,
        _ => Known::Stopped,
    };
    if let Some(slot) = known.get_mut(name) {
        *slot = k;
    }
}

#[test]
fn a_vmm_outside_its_cgroup_is_stopped_before_a_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = halt_kernel(dir.path());
    let d = start_daemon(dir.path(), Arc::new(NetNs::new("svoutside")));
    let tiny = json!({"slice": "pl_converge", "kernel": k, "mem_mib": 16});
    assert_eq!(d.call("PUT", "/slivers/s", Some(tiny)).status, 201);
    // A VMM of s that the daemon did not start, in no sliver cgroup (as a daemon running
    // without cgroups would have left it), with the daemon's arguments for s.
    let state = state_dir(dir.path());
    let run = state.join("run/s");
    std::fs::create_dir_all(&run).expect("run dir");
    let audit = audit_store::sliver_dir(&state, "s");
    let mut stray = std::process::Command::new(e2e::run::vmm_bin())
        .args(["run", "--sliver", "s", "--exit-file"])
        .arg(run.join("exit.json"))
        .arg("--kernel")
        .arg(&k)
        .args(["--mem-mib", "16", "--slice", "pl_converge", "--audit-dir"])
        .arg(&audit)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("a stray VMM");
    let start = Instant::now();
    while !audit_store::writer::has_writer(&audit) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stray never opened its audit log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The start's convergence looks beyond the sliver's cgroup (the audit log has a writer),
    // so the stray is stopped and exactly one VMM runs afterwards.
    let r = d.call("POST", "/slivers/s/start", None);
    assert_eq!(r.status, 200, "{r:?}");
    let pid = r.json()["pid"].as_u64().expect("pid");
    assert_ne!(pid, u64::from(stray.id()));
    let start = Instant::now();
    while stray.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the stray VMM still runs beside the started one"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(pid_alive(pid), "the started VMM runs");
    d.stop();
    e2e::daemon::kill_vmms_under(dir.path());
    e2e::daemon::tidy_cgroups_of(dir.path());
}
