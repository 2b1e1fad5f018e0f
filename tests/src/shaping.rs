//! Shaping tests and benchmarks: slivers defined on a real node daemon, each "VMM" a
//! `sliver_loadgen` process (real device and shaper, harness-fed at native speed), rates
//! measured on the TAPs by the host kernel's counters.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::daemon::{request, ResponseExt};
use crate::inject::Injector;
use crate::netns::NetNs;
use crate::run::{slicevisor_bin, ChildGuard};

/// The `sliver_loadgen` binary next to `slicevisor`.
pub fn loadgen_bin() -> PathBuf {
    let bin = slicevisor_bin().with_file_name("sliver_loadgen");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

/// A sliver defined on the daemon, with its TAP and ledger slot.
#[derive(Debug, Clone)]
pub struct Sliver {
    /// Its name.
    pub name: String,
    /// Its TAP (in the test's namespace).
    pub tap: String,
    /// Its ledger slot.
    pub slot: u64,
    /// The source address its frames carry (distinct per sliver).
    pub src_ip: String,
}

/// Define sliver `sv{i}` with `net` limits merged into its `net` object.
pub fn define(socket: &Path, i: usize, net_limits: Value) -> Sliver {
    let name = format!("sv{i}");
    let mut net = json!({
        "ipv4": format!("10.{}.{}.2/24", 100 + i / 200, i % 200),
        "host_ipv4": format!("10.{}.{}.1", 100 + i / 200, i % 200),
    });
    if let (Some(n), Some(extra)) = (net.as_object_mut(), net_limits.as_object()) {
        n.extend(extra.clone());
    }
    // Never started (the load generator plays its VMM), but the spec wants an existing file.
    let kernel = slicevisor_bin();
    let spec = json!({"slice": format!("pl_{name}"), "kernel": kernel, "net": net});
    let r = request(
        socket,
        "PUT",
        &format!("/slivers/{name}"),
        Some(spec.to_string().as_bytes()),
    );
    assert_eq!(r.status, 201, "PUT {name}: {}", r.body);
    let v = r.json();
    Sliver {
        tap: node_daemon::host_net::tap_name(&name),
        slot: v["shaping"]["slot"].as_u64().expect("shaping.slot in GET"),
        src_ip: format!("10.200.{}.{}", i / 250, i % 250 + 1),
        name,
    }
}

/// GET the sliver's shaping view.
pub fn shaping(socket: &Path, name: &str) -> Value {
    request(socket, "GET", &format!("/slivers/{name}"), None).json()["shaping"].clone()
}

/// Start a load generator for `s` in `ns`: shaped by the daemon's ledger in `state`, or
/// unshaped when `state` is `None`.
pub fn spawn_loadgen(ns: &NetNs, s: &Sliver, state: Option<&Path>, seconds: f64) -> ChildGuard {
    spawn_loadgen_with(ns, s, state, seconds, &[])
}

/// [`spawn_loadgen`] with `extra` flags.
pub fn spawn_loadgen_with(
    ns: &NetNs,
    s: &Sliver,
    state: Option<&Path>,
    seconds: f64,
    extra: &[&str],
) -> ChildGuard {
    let mut cmd = ns.command(loadgen_bin());
    cmd.args(extra);
    cmd.args(["--tap", &s.tap, "--src-ip", &s.src_ip])
        .args(["--seconds", &seconds.to_string()]);
    if let Some(state) = state {
        cmd.arg("--ledger")
            .arg(state.join("shaper.ledger"))
            .args(["--slot", &s.slot.to_string()]);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning sliver_loadgen");
    ChildGuard::new(child)
}

/// What a load generator printed when it ended.
pub fn loadgen_report(child: Child) -> Value {
    let out = child.wait_with_output().expect("loadgen output");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "loadgen printed no report ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Bytes the host received on each TAP (what the guests sent), read with one `ip -s -j link`.
pub fn tap_rx_bytes(ns: &NetNs, taps: &[&str]) -> Vec<u64> {
    let out = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-s", "-j", "link", "show"])
        .output()
        .expect("ip -s -j link");
    let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    taps.iter()
        .map(|tap| {
            links
                .as_array()
                .and_then(|a| a.iter().find(|l| l["ifname"] == *tap))
                .and_then(|l| l["stats64"]["rx"]["bytes"].as_u64())
                .unwrap_or_else(|| panic!("no stats for TAP {tap}"))
        })
        .collect()
}

/// Achieved bit/s on each TAP over `window`.
pub fn measure_rates(ns: &NetNs, taps: &[&str], window: Duration) -> Vec<f64> {
    let before = tap_rx_bytes(ns, taps);
    let t0 = Instant::now();
    std::thread::sleep(window);
    let after = tap_rx_bytes(ns, taps);
    let secs = t0.elapsed().as_secs_f64();
    before
        .iter()
        .zip(after)
        .map(|(b, a)| (a - b) as f64 * 8.0 / secs)
        .collect()
}

/// Send `len`-byte frames into TAP `tap` (in `ns`) from the host side at about `bps` for
/// `secs`, from a background thread: what the guest behind the TAP receives. Frames the TAP
/// cannot queue are dropped by the kernel, as frames for a slow receiver are.
pub fn inject(
    ns: &NetNs,
    tap: &str,
    bps: u64,
    len: usize,
    secs: f64,
) -> std::thread::JoinHandle<()> {
    let tap = tap.to_string();
    let injector = ns.run_in(move || Injector::open(&tap));
    std::thread::spawn(move || {
        let mut frame = vec![0u8; len];
        frame[..6].copy_from_slice(&[0x02, 0x5e, 0, 0, 0, 2]);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental EtherType
        let per_ms = bps as f64 / 8.0 / len as f64 / 1000.0;
        let start = Instant::now();
        let mut sent = 0f64;
        while start.elapsed().as_secs_f64() < secs {
            let due = start.elapsed().as_secs_f64() * 1000.0 * per_ms;
            while sent < due {
                injector.offer(&frame);
                sent += 1.0;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}
