//! How accurately `cpu_share` holds: N slivers (N = 2, 4, 8, 16), each a tiny guest spinning
//! forever, all pinned to CPU 0 (`cpu_cores: "0"`) under one daemon, with shares 1, 2, 3, 4,
//! 1, 2, ... Each sliver's CPU time over the window (its cgroup's, from `GET /slivers/NAME`)
//! against its ideal, share / sum of shares of one CPU: the largest relative error, and
//! Jain's fairness index of actual/ideal (1.0 when every sliver gets exactly its share).
//!
//! Run (root): `cargo build --release --workspace --bins && target/release/cpu_share_accuracy [SECONDS]`

use std::time::{Duration, Instant};

use e2e::daemon::spawn_daemon;
use e2e::daemon::{request, ResponseExt};
use e2e::netns::NetNs;
use e2e::tiny_guest::Program;
use serde_json::json;

fn cpu_ns(socket: &std::path::Path, name: &str) -> u64 {
    let view = request(socket, "GET", &format!("/slivers/{name}"), None).json();
    view["cgroup"]["cpu_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cgroup CPU time: {view}"))
}

/// Jain's fairness index of `x`: (sum x)^2 / (n * sum x^2) (Jain, Chiu, Hawe 1984).
fn jain(x: &[f64]) -> f64 {
    let sum: f64 = x.iter().sum();
    let squares: f64 = x.iter().map(|v| v * v).sum();
    sum * sum / (x.len() as f64 * squares)
}

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("SECONDS must be a number"))
        .unwrap_or(10);
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = Program::new()
        .boot_marker()
        .spin_forever()
        .write_elf(dir.path(), "spin.elf");
    let ns = NetNs::new("svbenchcpu");
    let (_daemon, socket) = spawn_daemon(&ns, dir.path(), &["--guest-stop-timeout", "0"], true);
    println!("cpu_share accuracy: spinning tiny guests pinned to CPU 0, shares 1,2,3,4,1,..., {secs} s window");
    println!(
        "{:>3} | {:>14} | {:>12} | {:>8} | per sliver: share -> actual % of CPU 0 (ideal %)",
        "N", "CPU 0 used %", "max error %", "Jain"
    );
    for n in [2usize, 4, 8, 16] {
        let names: Vec<String> = (0..n).map(|i| format!("s{n}-{i}")).collect();
        let shares: Vec<u64> = (0..n as u64).map(|i| i % 4 + 1).collect();
        for (name, share) in names.iter().zip(&shares) {
            let spec = json!({"slice": "bench", "kernel": kernel, "mem_mib": 16,
                              "cpu_share": share, "cpu_cores": "0"});
            let r = request(
                &socket,
                "PUT",
                &format!("/slivers/{name}"),
                Some(spec.to_string().as_bytes()),
            );
            assert_eq!(r.status, 201, "{r:?}");
            let r = request(&socket, "POST", &format!("/slivers/{name}/start"), None);
            assert_eq!(r.status, 200, "{r:?}");
        }
        // Let every guest reach its spin loop before the window opens.
        std::thread::sleep(Duration::from_secs(2));
        let t0 = Instant::now();
        let before: Vec<u64> = names.iter().map(|s| cpu_ns(&socket, s)).collect();
        std::thread::sleep(Duration::from_secs(secs));
        let after: Vec<u64> = names.iter().map(|s| cpu_ns(&socket, s)).collect();
        let window = t0.elapsed().as_nanos() as f64;
        let used: Vec<f64> = before
            .iter()
            .zip(&after)
            .map(|(b, a)| (a - b) as f64)
            .collect();
        let total: f64 = used.iter().sum();
        let share_sum: u64 = shares.iter().sum();
        let ratio: Vec<f64> = used
            .iter()
            .zip(&shares)
            .map(|(u, s)| (u / total) / (*s as f64 / share_sum as f64))
            .collect();
        let max_err = ratio.iter().map(|r| (r - 1.0).abs()).fold(0.0, f64::max);
        let detail: Vec<String> = used
            .iter()
            .zip(&shares)
            .map(|(u, s)| {
                format!(
                    "{s}->{:.1}({:.1})",
                    100.0 * u / window,
                    100.0 * total / window * *s as f64 / share_sum as f64
                )
            })
            .collect();
        println!(
            "{n:>3} | {:>14.1} | {:>12.1} | {:>8.4} | {}",
            100.0 * total / window,
            100.0 * max_err,
            jain(&ratio),
            detail.join(" ")
        );
        for name in &names {
            let _ = request(&socket, "POST", &format!("/slivers/{name}/stop"), None);
            let _ = request(&socket, "DELETE", &format!("/slivers/{name}"), None);
        }
    }
}
