//! What the node's NAT and isolation cost, side by side in one run, in network namespaces
//! made here:
//!
//! 1. Applying the node's nftables table (`node_daemon::nft_rules`) with 32 slivers defined
//!    (one published port each), as the daemon does after each change: p50 and p99 of 200
//!    applies, each with one sliver's port changed.
//! 2. Sliver-to-outside throughput of the loadgen harness (the real virtio-net device with
//!    anti-spoofing and the audit, fed at native speed) through the node to an "outside"
//!    namespace over the uplink veth, 1500-byte UDP frames: with the rules (the 32 slivers'
//!    table, the loaded sliver's rules last, masquerade, and the VMM's destination checks)
//!    against without (plain forwarding), alternating, packets counted where they arrive.
//!
//! Run (root): `cargo build --release --workspace --bins && target/release/nat_rules [SECONDS]`

use std::time::{Duration, Instant};

use e2e::netns::NetNs;
use e2e::shaping::{loadgen_bin, loadgen_report};
use node_daemon::nft_rules::{self, SliverRules};
use node_daemon::published_ports::{PortForward, Proto};

const SLIVERS: u32 = 32;

fn slivers(changed: u32) -> Vec<SliverRules> {
    (0..SLIVERS)
        .map(|i| SliverRules {
            name: format!("s{i}"),
            tap: format!("sv-s{i}"),
            guest: std::net::Ipv4Addr::new(10, 99, 0, (4 * i + 2) as u8),
            ports: vec![PortForward {
                proto: Proto::Tcp,
                node_port: if i == changed % SLIVERS {
                    30_000 + changed as u16
                } else {
                    20_000 + i as u16
                },
                sliver_port: 22,
            }],
        })
        .collect()
}

fn apply(ns: &NetNs, batch: serde_json::Value) -> Duration {
    ns.run_in(move || {
        let start = Instant::now();
        nft_rules::apply(&batch).expect("nft apply");
        start.elapsed()
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let node = NetNs::new("svnatb");
    let outside = NetNs::new("svnatbo");
    node.sh(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "out0",
    ]);
    node.sh(&["ip", "link", "set", "out0", "netns", outside.name()]);
    node.sh(&["ip", "addr", "add", "198.51.100.1/24", "dev", "up0"]);
    node.sh(&["ip", "link", "set", "up0", "up"]);
    outside.sh(&["ip", "addr", "add", "198.51.100.2/24", "dev", "out0"]);
    outside.sh(&["ip", "link", "set", "out0", "up"]);
    let deny = ["203.0.113.0/24".parse().expect("net")];

    // 1. Applying the table.
    let mut times: Vec<Duration> = (0..200)
        .map(|k| apply(&node, nft_rules::ruleset("up0", &deny, &slivers(k))))
        .collect();
    times.sort();
    println!(
        "applying the table with {SLIVERS} slivers (200 applies): p50 {:.1} ms, p99 {:.1} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.99)
    );

    // 2. Throughput through the node, the last sliver's TAP.
    let last = SLIVERS - 1;
    let tap = format!("sv-s{last}");
    let guest = format!("10.99.0.{}", 4 * last + 2);
    node.sh(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
    node.sh(&[
        "ip",
        "addr",
        "add",
        &format!("10.99.0.{}/30", 4 * last + 1),
        "dev",
        &tap,
    ]);
    node.sh(&["ip", "link", "set", &tap, "up"]);
    for iface in ["up0", tap.as_str()] {
        node.sh(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.conf.{iface}.forwarding=1"),
        ]);
    }
    let tap_mac = node.sh(&["cat", &format!("/sys/class/net/{tap}/address")]);
    let audit = tempfile::tempdir().expect("tmp");
    let received = || -> u64 {
        outside
            .sh(&["cat", "/sys/class/net/out0/statistics/rx_packets"])
            .parse()
            .expect("count")
    };
    // Three configurations: nothing; the kernel's NAT alone (one masquerade rule, as the
    // table has for this sliver); the daemon's whole table with the VMM's checks.
    let nat_only = serde_json::json!({"nftables": [
        {"add": {"table": {"family": "inet", "name": nft_rules::TABLE}}},
        {"add": {"chain": {"family": "inet", "table": nft_rules::TABLE, "name": "postrouting",
                           "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
        {"add": {"rule": {"family": "inet", "table": nft_rules::TABLE, "chain": "postrouting",
                          "expr": [
                              {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": guest}},
                              {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "up0"}},
                              {"masquerade": null}]}}},
    ]});
    let configs = [
        (
            "without rules (plain forwarding)",
            nft_rules::removal(),
            false,
        ),
        (
            "the kernel's NAT alone (one masquerade rule)",
            nat_only,
            false,
        ),
        (
            "the table of 32 slivers + the VMM's checks",
            nft_rules::ruleset("up0", &deny, &slivers(0)),
            true,
        ),
    ];
    let run = |batch: &serde_json::Value, vmm_checks: bool, tag: usize| -> (f64, f64) {
        apply(&node, nft_rules::removal());
        apply(&node, batch.clone());
        let mut cmd = node.command(loadgen_bin());
        cmd.args([
            "--tap",
            &tap,
            "--src-ip",
            &guest,
            "--dst-ip",
            "198.51.100.2",
        ])
        .args([
            "--dst-mac",
            &tap_mac,
            "--frame",
            "1500",
            "--seconds",
            &secs.to_string(),
        ])
        .arg("--audit-dir")
        .arg(audit.path().join(tag.to_string()))
        .args([
            "--slice",
            "bench",
            "--sliver",
            &format!("s{last}"),
            "--ip",
            &guest,
        ]);
        if vmm_checks {
            for d in ["203.0.113.0/24", "10.99.0.0/24", "198.51.100.1/32"] {
                cmd.args(["--deny-dst", d]);
            }
        }
        let before = received();
        let child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("sliver_loadgen");
        let report = loadgen_report(child);
        std::thread::sleep(Duration::from_millis(200));
        let arrived = received() - before;
        let sent = report["packets"].as_f64().unwrap_or(0.0);
        let s = report["secs"].as_f64().unwrap_or(secs);
        (arrived as f64 / s, sent / s)
    };
    let mut results = vec![Vec::new(); configs.len()];
    for round in 0..2 {
        for (i, (_, batch, checks)) in configs.iter().enumerate() {
            results[i].push(run(batch, *checks, round * 10 + i));
        }
    }
    apply(&node, nft_rules::removal());
    let mean = |v: &[(f64, f64)]| v.iter().map(|x| x.0).sum::<f64>() / v.len() as f64;
    let base = mean(&results[0]);
    println!("sliver -> outside, 1500-byte UDP, {secs} s x 2 each, interleaved:");
    println!("{:<48}| {:>14} | {:>9}", "", "arrived pkt/s", "of none");
    for (i, (name, _, _)) in configs.iter().enumerate() {
        let m = mean(&results[i]);
        println!("{name:<48}| {m:>14.0} | {:>8.1} %", 100.0 * m / base);
    }
    println!("(goal: the table at least 95 % of none)");
    println!(
        "command: cargo build --release --workspace --bins && target/release/nat_rules {secs}"
    );
}
