//! The node daemon: create→running latency of the VMM part (PUT + start until the VMM's
//! boot-timer line, i.e. the guest's first instruction; no guest kernel boot), creations per
//! second per host core, and the daemon's RSS with 32 slivers defined and running.
//!
//! Run (root): `cargo build --release --workspace --bins && target/release/node_bench [N]`

use std::path::Path;
use std::time::{Duration, Instant};

use benches::summarize;
use e2e::daemon::request;
use e2e::daemon::spawn_daemon;
use e2e::netns::NetNs;
use e2e::tiny_guest::Program;
use serde_json::json;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `(Rss, Pss, Private_Clean + Private_Dirty)` of process `pid`, KiB (/proc/PID/smaps_rollup).
/// Pss shares each page among the processes mapping it, so text shared by every VMM on the
/// node counts once in the sum over slivers.
fn memory_kib(pid: u32) -> Option<[f64; 3]> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        rollup
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some([
        field("Rss:"),
        field("Pss:"),
        field("Private_Clean:") + field("Private_Dirty:"),
    ])
}

fn wait_for(path: &Path, needle: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(needle)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} never showed {needle}",
            path.display()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N must be a number"))
        .unwrap_or(32);
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = Program::new()
        .boot_marker()
        .halt_forever()
        .write_elf(dir.path(), "tiny.elf");
    let ns = NetNs::new("svbenchnode");
    // Tiny guests cannot answer a power-off request: straight to SIGTERM on delete.
    let (daemon, socket) = spawn_daemon(&ns, dir.path(), &["--guest-stop-timeout", "0"], true);
    let idle_rss = rss_kib(daemon.id());
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let mut latencies = Vec::new();
    let (mut puts, mut starts, mut boots) = (Vec::new(), Vec::new(), Vec::new());
    let mut vmm_own = Vec::new();
    let all = Instant::now();
    for i in 0..n {
        let name = format!("b-{i}");
        let spec = json!({"slice": "bench", "kernel": kernel, "mem_mib": 16,
                          "net": {"ipv4": format!("10.30.{i}.2/24"), "host_ipv4": format!("10.30.{i}.1")}});
        let t = Instant::now();
        let r = request(
            &socket,
            "PUT",
            &format!("/slivers/{name}"),
            Some(spec.to_string().as_bytes()),
        );
        assert_eq!(r.status, 201, "{r:?}");
        let put = t.elapsed();
        let r = request(&socket, "POST", &format!("/slivers/{name}/start"), None);
        assert_eq!(r.status, 200, "{r:?}");
        let started = t.elapsed();
        wait_for(
            &dir.path().join(format!("state/run/{name}/vmm.log")),
            "boot-timer",
        );
        let done = t.elapsed();
        // The VMM's own account: from building the VM to the first instruction.
        let log = std::fs::read_to_string(dir.path().join(format!("state/run/{name}/vmm.log")))
            .unwrap_or_default();
        if let Some(ms) = log
            .lines()
            .find_map(|l| l.split("guest running after ").nth(1))
            .and_then(|rest| rest.split(" ms wall").next())
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            vmm_own.push(ms);
        }
        latencies.push(done.as_secs_f64() * 1e3);
        puts.push(put.as_secs_f64() * 1e3);
        starts.push((started - put).as_secs_f64() * 1e3);
        boots.push((done - started).as_secs_f64() * 1e3);
    }
    let rate = n as f64 / all.elapsed().as_secs_f64();
    let busy_rss = rss_kib(daemon.id());
    // Each running sliver's processes: the keeper the daemon started and its child, the
    // jailed VMM. [Rss, Pss, private] of the VMM and of keeper + VMM.
    let (mut vmm_mem, mut sliver_mem) = (Vec::new(), Vec::new());
    for i in 0..n {
        let view = request(&socket, "GET", &format!("/slivers/b-{i}"), None);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&view.body) else {
            continue;
        };
        let Some(keeper) = v["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
            continue;
        };
        let children = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children"))
            .unwrap_or_default();
        let Some(vmm) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        else {
            continue;
        };
        let (Some(k), Some(m)) = (memory_kib(keeper), memory_kib(vmm)) else {
            continue;
        };
        vmm_mem.push(m);
        // Rss does not add up (the two share pages); Pss and private memory do.
        sliver_mem.push([f64::NAN, k[1] + m[1], k[2] + m[2]]);
    }
    for i in 0..n {
        let r = request(&socket, "DELETE", &format!("/slivers/b-{i}"), None);
        assert_eq!(r.status, 204, "{r:?}");
    }
    let l = summarize(&latencies);
    println!("node daemon, {n} slivers (tiny guest, TAP per sliver), {cores} host cores");
    println!("{:<44} {:>9} {:>9} {:>9}", "", "median", "p90", "max");
    println!(
        "{:<44} {:>9.1} {:>9.1} {:>9.1}",
        "PUT + start -> guest's first instruction (ms)", l.median, l.p90, l.max
    );
    for (what, v) in [
        ("  of which PUT (define: record, TAP, slot) (ms)", &puts),
        ("  of which POST start until its reply (ms)", &starts),
        ("  of which reply -> first instruction (ms)", &boots),
        ("  VMM's own: building the VM -> 1st instr (ms)", &vmm_own),
    ] {
        let s = summarize(v);
        println!("{what:<44} {:>9.1} {:>9.1} {:>9.1}", s.median, s.p90, s.max);
    }
    println!(
        "creations per second: {rate:.1} ({:.1} per core)",
        rate / cores as f64
    );
    println!(
        "daemon RSS: {idle_rss} KiB idle, {busy_rss} KiB with {n} slivers defined and running"
    );
    for (what, mem) in [("VMM", &vmm_mem), ("keeper + VMM", &sliver_mem)] {
        if mem.is_empty() {
            continue;
        }
        let col = |i: usize| summarize(&mem.iter().map(|m| m[i]).collect::<Vec<_>>()).median;
        let rss = if mem[0][0].is_nan() {
            String::new()
        } else {
            format!("Rss {:.0}, ", col(0))
        };
        println!(
            "{what} per sliver (16 MiB tiny guest, idle, capture ring on), median KiB: {rss}Pss {:.0}, private {:.0}",
            col(1),
            col(2)
        );
    }
    drop(daemon);
}
