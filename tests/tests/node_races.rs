//! The node daemon under concurrent clients on overlapping names: no reply is false (no 2xx
//! without its effect, no 500), including when every shaper slot is taken, and the host ends
//! matching the records. Real daemon, TAPs in a namespace.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use e2e::daemon::{host_state, request, Daemon, ResponseExt};
use e2e::netns::NetNs;
use serde_json::{json, Value};

fn kernel_file(dir: &Path) -> std::path::PathBuf {
    let k = dir.join("vmlinux");
    std::fs::write(&k, b"not booted by these tests").expect("kernel");
    k
}

/// A definition on a TAP in 10.`a`.`b`.0/24.
fn spec(kernel: &Path, a: u8, b: u8) -> Value {
    json!({
        "slice": "pl_races",
        "kernel": kernel,
        "mem_mib": 16,
        "net": {"ipv4": format!("10.{a}.{b}.2/24"), "host_ipv4": format!("10.{a}.{b}.1")}
    })
}

/// Every defined sliver has its TAP and slot, and nothing else has either.
fn assert_host_matches(d: &Daemon, dir: &Path) {
    let names: Vec<String> = d
        .call("GET", "/slivers", None)
        .json()
        .as_array()
        .expect("list")
        .iter()
        .map(|v| v["name"].as_str().expect("name").to_string())
        .collect();
    let host = host_state(&d.ns, &dir.join("state"));
    let taps: Vec<String> = names
        .iter()
        .map(|n| node_daemon::host_net::tap_name(n))
        .collect();
    let mut have: Vec<String> = host.taps.keys().cloned().collect();
    let mut want = taps;
    have.sort();
    want.sort();
    assert_eq!(have, want, "TAPs vs records");
    let mut slots: Vec<String> = host.slots.into_iter().collect();
    let mut names = names;
    slots.sort();
    names.sort();
    assert_eq!(slots, names, "slots vs records");
}

#[test]
fn with_every_shaper_slot_taken_no_put_succeeds_and_one_freed_slot_goes_to_one_sliver() {
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(dir.path());
    let d = Daemon::start_with(dir.path(), Arc::new(NetNs::new("svslots")), &[]);
    let slots = vmm::ledger::SLOTS;
    for i in 0..slots {
        let (a, b) = (
            u8::try_from(i / 200 + 1).expect("a"),
            u8::try_from(i % 200).expect("b"),
        );
        let r = d.call("PUT", &format!("/slivers/fill-{i}"), Some(spec(&k, a, b)));
        assert_eq!(r.status, 201, "fill-{i}: {r:?}");
    }
    for round in 0..5 {
        let body = spec(&k, 99, round).to_string().into_bytes();
        let path = format!("/slivers/extra-{round}");
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (socket, body, path, statuses) = (
                    d.socket.clone(),
                    body.clone(),
                    path.clone(),
                    statuses.clone(),
                );
                std::thread::spawn(move || {
                    let r = request(&socket, "PUT", &path, Some(&body));
                    statuses.lock().expect("statuses").push((r.status, r.body));
                })
            })
            .collect();
        for t in threads {
            t.join().expect("client");
        }
        let statuses = statuses.lock().expect("statuses").clone();
        assert!(
            statuses
                .iter()
                .all(|(s, b)| *s == 507 && b.contains("shaper slot")),
            "round {round}: {statuses:?}"
        );
        assert_eq!(d.call("GET", &path, None).status, 404, "round {round}");
        assert_host_matches(&d, dir.path());
    }
    // One slot comes free: sixteen identical PUTs, one creates, fifteen find it created.
    assert_eq!(d.call("DELETE", "/slivers/fill-0", None).status, 204);
    let body = spec(&k, 99, 9).to_string().into_bytes();
    let statuses = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let (socket, body, statuses) = (d.socket.clone(), body.clone(), statuses.clone());
            std::thread::spawn(move || {
                let r = request(&socket, "PUT", "/slivers/lucky", Some(&body));
                statuses.lock().expect("statuses").push(r.status);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let mut statuses = statuses.lock().expect("statuses").clone();
    statuses.sort_unstable();
    assert_eq!(statuses, [vec![200; 15], vec![201]].concat());
    assert_eq!(d.call("GET", "/slivers/lucky", None).status, 200);
    assert_host_matches(&d, dir.path());
    d.stop();
}

#[test]
fn sixty_four_clients_on_overlapping_names_get_only_true_replies() {
    const CLIENTS: usize = 64;
    const OPS: usize = 30;
    let dir = tempfile::tempdir().expect("tmp");
    let k = kernel_file(dir.path());
    let d = Daemon::start_with(dir.path(), Arc::new(NetNs::new("svraces")), &[]);
    let names = ["r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7"];
    let tally = Arc::new(Mutex::new(BTreeMap::<(String, u16), usize>::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (socket, k, tally) = (d.socket.clone(), k.clone(), tally.clone());
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(u64::try_from(c).expect("seed"));
                for _ in 0..OPS {
                    let i = rng.usize(..names.len());
                    let name = names[i];
                    let path = format!("/slivers/{name}");
                    let octet = u8::try_from(i).expect("octet");
                    let (method, body) = match rng.u8(..5) {
                        0 | 1 => ("PUT", Some(spec(&k, 40, octet))),
                        2 => ("DELETE", None),
                        3 => ("PATCH", Some(json!({"net_share": rng.u32(1..10)}))),
                        _ => ("GET", None),
                    };
                    let bytes = body.map(|b| b.to_string().into_bytes());
                    let r = request(&socket, method, &path, bytes.as_deref());
                    assert!(r.status < 500, "{method} {path}: {r:?}");
                    // A 2xx is true when it is made: what it says is what the daemon has.
                    if method == "PUT" && (200..300).contains(&r.status) {
                        assert_eq!(r.json()["name"], name, "{r:?}");
                        assert_eq!(
                            r.json()["spec"]["net"]["host_ipv4"],
                            format!("10.40.{octet}.1")
                        );
                    }
                    *tally
                        .lock()
                        .expect("tally")
                        .entry((method.to_string(), r.status))
                        .or_default() += 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let tally = tally.lock().expect("tally").clone();
    eprintln!(
        "{CLIENTS} clients x {OPS} operations on {} names: {tally:?}",
        names.len()
    );
    assert_eq!(tally.values().sum::<usize>(), CLIENTS * OPS);
    assert!(tally.keys().any(|(m, s)| m == "PUT" && *s == 201));
    assert!(tally.keys().any(|(m, s)| m == "DELETE" && *s == 204));
    assert_host_matches(&d, dir.path());
    d.stop();
}
