//! Node-wide weighted shares: slicevisor's shaper against Linux HTB, side by side in one run.
//!
//! For N = 2, 4, 8, 16, 32 backlogged slivers with weights 1..8 (sliver i has weight
//! i mod 8 + 1), each sending 1500-byte frames as fast as it is allowed:
//! - **slicevisor**: a node daemon with `--node-rate`; each sliver's "VMM" is a
//!   `sliver_loadgen` process (the real virtio-net device and shaper stage bound to the
//!   daemon's ledger, fed by the guest-driver harness at native speed). Rates are measured on
//!   the TAPs by the host kernel.
//! - **HTB** (the PlanetLab anchor): the same TAPs, unshaped load generators, every TAP's
//!   ingress redirected to one ifb device with an HTB root at the node rate and one class per
//!   sliver (rate = min, ceil = cap, quantum ∝ share), classified by source address. Rates are
//!   the classes' sent bytes.
//!
//! Reported per N: max error against the ideal allocation, weighted Jain index, link
//! utilisation, node CPU (all processes, /proc/stat) and, for slicevisor, the daemon's CPU and
//! the time the allocation takes to re-converge after a sliver starts and after one stops.
//!
//! Run (root): `cargo build --release --workspace --bins && target/release/shares [SECONDS]`

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::daemon::request;
use e2e::daemon::spawn_daemon;
use e2e::netns::NetNs;
use e2e::run::ChildGuard;
use e2e::shaping::{define, measure_rates, spawn_loadgen, spawn_loadgen_with, Sliver};
use node_daemon::shares::alloc::{allocate, jain_index, Claim};
use serde_json::json;
use vmm::ledger::Ledger;

const NODE_RATE: u64 = 200_000_000;
const COUNTS: [usize; 5] = [2, 4, 8, 16, 32];
const HTB_QUANTUM_UNIT: u64 = 1514;

fn weight(i: usize) -> u32 {
    (i % 8) as u32 + 1
}

fn ideal(n: usize) -> Vec<f64> {
    let claims: Vec<Claim> = (0..n).map(|i| Claim::weighted(weight(i))).collect();
    allocate(NODE_RATE, &claims)
        .into_iter()
        .map(|r| r as f64)
        .collect()
}

/// Accuracy figures of one measurement.
struct Accuracy {
    max_err: f64,
    jain: f64,
    util: f64,
}

fn accuracy(achieved: &[f64], ideal: &[f64]) -> Accuracy {
    let max_err = achieved
        .iter()
        .zip(ideal)
        .map(|(a, i)| (a - i).abs() / i)
        .fold(0.0, f64::max);
    Accuracy {
        max_err: max_err * 100.0,
        jain: jain_index(achieved, ideal),
        util: achieved.iter().sum::<f64>() / NODE_RATE as f64 * 100.0,
    }
}

/// The kernel's softirq threads (HTB and ifb work may run there).
fn ksoftirqd_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd"))
        })
        .collect()
}

/// CPU ticks (user + system) of process `pid`.
fn proc_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory effects.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// CPU (percent of one core) that `pids` used while `f` ran for `secs`.
fn cpu_during<T>(pids: &[u32], secs: f64, f: impl FnOnce() -> T) -> (T, f64) {
    let ticks = |pids: &[u32]| pids.iter().map(|&p| proc_ticks(p)).sum::<u64>();
    let t0 = ticks(pids);
    let out = f();
    let used = ticks(pids).saturating_sub(t0) as f64 / ticks_per_sec();
    (out, used / secs * 100.0)
}

fn tc(ns: &NetNs, args: &str) {
    let out = Command::new("tc")
        .args(["-n", ns.name()])
        .args(args.split_whitespace())
        .output()
        .expect("running tc");
    assert!(
        out.status.success(),
        "tc {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(ns: &NetNs, args: &str) {
    let out = Command::new("ip")
        .args(["-n", ns.name()])
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// HTB on ifb for `slivers`: returns the class ids in sliver order.
fn setup_htb(ns: &NetNs, slivers: &[Sliver]) -> Vec<String> {
    ip(ns, "link add svifb0 type ifb");
    ip(ns, "link set svifb0 up");
    tc(ns, "qdisc add dev svifb0 root handle 1: htb default 9999");
    tc(
        ns,
        &format!("class add dev svifb0 parent 1: classid 1:1 htb rate {NODE_RATE}bit ceil {NODE_RATE}bit"),
    );
    let mut ids = Vec::new();
    for (i, s) in slivers.iter().enumerate() {
        let id = format!("1:{:x}", 16 + i);
        // PlanetLab: rate = net_min_rate (0 here; HTB needs a positive rate), ceil = cap
        // (the node rate here), quantum proportional to net_share.
        tc(
            ns,
            &format!(
                "class add dev svifb0 parent 1:1 classid {id} htb rate 8bit ceil {NODE_RATE}bit quantum {}",
                HTB_QUANTUM_UNIT * u64::from(weight(i))
            ),
        );
        tc(
            ns,
            &format!(
                "filter add dev svifb0 parent 1: protocol ip prio 1 u32 match ip src {}/32 flowid {id}",
                s.src_ip
            ),
        );
        tc(ns, &format!("qdisc add dev {} handle ffff: ingress", s.tap));
        tc(
            ns,
            &format!(
                "filter add dev {} parent ffff: protocol all u32 match u32 0 0 action mirred egress redirect dev svifb0",
                s.tap
            ),
        );
        ids.push(id);
    }
    ids
}

fn teardown_htb(ns: &NetNs, slivers: &[Sliver]) {
    for s in slivers {
        let _ = Command::new("tc")
            .args(["-n", ns.name(), "qdisc", "del", "dev", &s.tap, "ingress"])
            .status();
    }
    let _ = Command::new("ip")
        .args(["-n", ns.name(), "link", "del", "svifb0"])
        .status();
}

/// Bytes sent per HTB class (`tc -s class show`; iproute2 6.1 prints HTB classes as text
/// only: "class htb 1:10 ..." then " Sent N bytes ...").
fn htb_bytes(ns: &NetNs, ids: &[String]) -> Vec<u64> {
    let out = Command::new("tc")
        .args(["-n", ns.name(), "-s", "class", "show", "dev", "svifb0"])
        .output()
        .expect("tc -s class show");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut sent = std::collections::HashMap::new();
    let mut current = None;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["class", "htb", id, ..] => current = Some(id.to_string()),
            ["Sent", bytes, ..] => {
                if let (Some(id), Ok(b)) = (current.take(), bytes.parse::<u64>()) {
                    sent.insert(id, b);
                }
            }
            _ => {}
        }
    }
    ids.iter()
        .map(|id| {
            *sent
                .get(id)
                .unwrap_or_else(|| panic!("no stats for HTB class {id} in:\n{text}"))
        })
        .collect()
}

/// Wait until every listed slot's allocation is within 2 % of `want` (bit/s); returns when.
fn wait_converged(ledger: &Ledger, slots: &[u64], want: &[f64], since: Instant) -> Option<f64> {
    while since.elapsed() < Duration::from_secs(2) {
        let ok = slots.iter().zip(want).all(|(&s, &w)| {
            let got = ledger
                .slot(s as usize)
                .map(|sl| sl.tx_alloc.load(Ordering::Relaxed) as f64 * 8.0)
                .unwrap_or(0.0);
            (got - w).abs() <= 0.02 * w
        });
        if ok {
            return Some(since.elapsed().as_secs_f64() * 1e3);
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    None
}

/// Re-convergence after a sliver (weight 4, idle until now) starts, and after it stops.
fn reconvergence(
    ns: &NetNs,
    state: &Path,
    ledger: &Ledger,
    slivers: &[Sliver],
    extra: &Sliver,
) -> (Option<f64>, Option<f64>) {
    let n = slivers.len();
    let slots: Vec<u64> = slivers.iter().map(|s| s.slot).collect();
    let mut with_extra: Vec<Claim> = (0..n).map(|i| Claim::weighted(weight(i))).collect();
    with_extra.push(Claim::weighted(4));
    let want_with: Vec<f64> = allocate(NODE_RATE, &with_extra)
        .into_iter()
        .map(|r| r as f64)
        .collect();
    let mut all_slots = slots.clone();
    all_slots.push(extra.slot);
    let extra_slot = ledger.slot(extra.slot as usize).expect("slot");
    let sent0 = extra_slot.tx_bytes.load(Ordering::Relaxed);
    let gen = spawn_loadgen(ns, extra, Some(state), 60.0);
    // The event is the newcomer's first frame.
    while extra_slot.tx_bytes.load(Ordering::Relaxed) == sent0 {
        std::thread::sleep(Duration::from_micros(100));
    }
    let started = wait_converged(ledger, &all_slots, &want_with, Instant::now());
    std::thread::sleep(Duration::from_millis(300));
    // The newcomer stops (SIGTERM: its VMM ends and its NIC goes).
    let t0 = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(gen.id() as i32, libc::SIGTERM) };
    let stopped = wait_converged(ledger, &slots, &ideal(n), t0);
    let _ = gen.take().wait();
    (started, stopped)
}

/// SIGTERM every generator and reap it.
fn stop_all(gens: Vec<ChildGuard>) {
    for g in gens {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(g.id() as i32, libc::SIGTERM) };
        let _ = g.take().wait();
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("> 2000".into(), |v| format!("{v:.1}"))
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3.0);
    let ns = NetNs::new("svshares");
    let dir = tempfile::tempdir().expect("tmp");
    let (daemon, socket) = spawn_daemon(
        &ns,
        dir.path(),
        &["--node-rate", &NODE_RATE.to_string()],
        true,
    );
    let state = dir.path().join("state");
    let ledger = Ledger::open(&state.join("shaper.ledger")).expect("ledger");
    println!(
        "node rate {} Mbit/s, 1500-byte frames, weights i mod 8 + 1, {secs} s per measurement",
        NODE_RATE / 1_000_000
    );
    println!(
        "| N | shaper | max error % | weighted Jain | utilisation % | CPU % of a core (senders + shaping) | of which daemon | re-converge start / stop (ms) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut results = Vec::new();
    for (round, &n) in COUNTS.iter().enumerate() {
        let base = round * 64;
        let slivers: Vec<Sliver> = (0..n)
            .map(|i| define(&socket, base + i, json!({"net_share": weight(i)})))
            .collect();
        let extra = define(&socket, base + 63, json!({"net_share": 4}));
        let taps: Vec<&str> = slivers.iter().map(|s| s.tap.as_str()).collect();
        let want = ideal(n);

        // slicevisor.
        let gens: Vec<ChildGuard> = slivers
            .iter()
            .map(|s| spawn_loadgen(&ns, s, Some(&state), 600.0))
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        let mut pids: Vec<u32> = gens.iter().map(|g| g.id()).collect();
        pids.extend(ksoftirqd_pids());
        pids.push(daemon.id());
        let d0 = proc_ticks(daemon.id());
        let (rates, cpu) = cpu_during(&pids, secs, || {
            measure_rates(&ns, &taps, Duration::from_secs_f64(secs))
        });
        let daemon_cpu = (proc_ticks(daemon.id()) - d0) as f64 / ticks_per_sec() / secs * 100.0;
        let ours = accuracy(&rates, &want);
        let (conv_start, conv_stop) = reconvergence(&ns, &state, &ledger, &slivers, &extra);
        stop_all(gens);
        println!(
            "| {n} | slicevisor | {:.2} | {:.4} | {:.1} | {cpu:.1} | {daemon_cpu:.2} | {} / {} |",
            ours.max_err,
            ours.jain,
            ours.util,
            fmt_ms(conv_start),
            fmt_ms(conv_stop)
        );
        let mut row = json!({"n": n, "slicevisor": {
            "max_error_pct": ours.max_err, "jain": ours.jain, "utilisation_pct": ours.util,
            "cpu_pct_of_core": cpu, "daemon_cpu_pct": daemon_cpu,
            "reconverge_start_ms": conv_start, "reconverge_stop_ms": conv_stop}});

        // HTB on the same TAPs: each sender offering twice its ideal rate (every class stays
        // backlogged), then senders with no limit at all.
        let ids = setup_htb(&ns, &slivers);
        for (label, offer) in [
            ("HTB, offer 2x ideal", true),
            ("HTB, unlimited offer", false),
        ] {
            let gens: Vec<ChildGuard> = slivers
                .iter()
                .zip(&want)
                .map(|(s, w)| {
                    let rate = format!("{}", (2.0 * w) as u64);
                    let extra: Vec<&str> = if offer {
                        vec!["--offer-bps", &rate]
                    } else {
                        vec![]
                    };
                    spawn_loadgen_with(&ns, s, None, 600.0, &extra)
                })
                .collect();
            std::thread::sleep(Duration::from_millis(700));
            let mut pids: Vec<u32> = gens.iter().map(|g| g.id()).collect();
            pids.extend(ksoftirqd_pids());
            let ((b0, b1, elapsed), cpu) = cpu_during(&pids, secs, || {
                let (b0, t0) = (htb_bytes(&ns, &ids), Instant::now());
                std::thread::sleep(Duration::from_secs_f64(secs));
                (b0, htb_bytes(&ns, &ids), t0.elapsed().as_secs_f64())
            });
            stop_all(gens);
            let htb_rates: Vec<f64> = b0
                .iter()
                .zip(&b1)
                .map(|(a, b)| (b - a) as f64 * 8.0 / elapsed)
                .collect();
            let htb = accuracy(&htb_rates, &want);
            println!(
                "| {n} | {label} | {:.2} | {:.4} | {:.1} | {cpu:.1} | – | not measured |",
                htb.max_err, htb.jain, htb.util
            );
            row[label] = json!({"max_error_pct": htb.max_err, "jain": htb.jain,
                                "utilisation_pct": htb.util, "cpu_pct_of_core": cpu});
        }
        teardown_htb(&ns, &slivers);
        results.push(row);
        for s in slivers.iter().chain([&extra]) {
            let r = request(&socket, "DELETE", &format!("/slivers/{}", s.name), None);
            assert_eq!(r.status, 204, "DELETE {}: {}", s.name, r.body);
        }
    }
    println!("{}", json!(results));
}
