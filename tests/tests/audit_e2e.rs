//! The audit stage end to end: a sliver's "VMM" (`sliver_loadgen`: the real device, shaper and
//! audit stage on a real TAP, fed at native speed) sends frames, some claiming another source
//! address; then the CLI query, the daemon's `GET /audit` and the pcapng export (read by
//! tshark) must say which slice and sliver sent what, and what was done with it.

use std::process::Command;

use e2e::daemon::{audit_now_path, now_rfc3339, spawn_daemon};
use e2e::daemon::{request, ResponseExt};
use e2e::netns::NetNs;
use e2e::run::slicevisor_bin;
use e2e::shaping::{loadgen_report, spawn_loadgen_with, tap_rx_bytes, Sliver};
use serde_json::Value;

fn tap_rx_packets(ns: &NetNs, tap: &str) -> u64 {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-s", "-j", "link", "show", "dev", tap])
        .output()
        .expect("ip");
    let v: Value = serde_json::from_slice(&out.stdout).expect("ip json");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

fn packets_with(flows: &Value, verdict: &str, src: &str) -> u64 {
    flows
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["verdict"] == verdict && f["src"] == src)
        .map(|f| f["packets"].as_u64().unwrap_or(0))
        .sum()
}

#[test]
fn spoofed_frames_are_dropped_and_every_packet_is_accounted_for() {
    let ns = NetNs::new("svaudit");
    ns.add_tap("svaud0", "10.201.0.254/24");
    let dir = tempfile::tempdir().expect("tmp");
    let state = dir.path().join("state");
    let sliver = Sliver {
        name: "alpha".into(),
        tap: "svaud0".into(),
        slot: 0,
        src_ip: "10.200.0.1".into(),
    };
    // Every 10th frame claims 10.200.0.2; 8 Mbit/s of 1500-byte frames for 1.5 s, so the
    // shaper makes frames wait too (they are recorded as delayed).
    let audit_dir = audit_store::sliver_dir(&state, "alpha");
    let gen = spawn_loadgen_with(
        &ns,
        &sliver,
        None,
        1.5,
        &[
            "--audit-dir",
            audit_dir.to_str().expect("utf-8 path"),
            "--slice",
            "pl_alpha",
            "--sliver",
            "alpha",
            "--ip",
            "10.200.0.1",
            "--spoof-every",
            "10",
            "--offer-bps",
            "8000000",
        ],
    );
    let report = loadgen_report(gen.take());
    let sent = report["packets"].as_u64().expect("packets");
    assert!(sent > 300, "{report}");
    assert_eq!(
        tap_rx_bytes(&ns, &["svaud0"])[0],
        report["bytes"].as_u64().expect("bytes")
    );
    let on_tap = tap_rx_packets(&ns, "svaud0");
    assert_eq!(on_tap, sent, "only the sliver's own frames reach the TAP");

    // The CLI: which slice and sliver sent to 10.201.0.1 just now?
    let at = now_rfc3339();
    let out = Command::new(slicevisor_bin())
        .args(["audit", "query", "--state-dir"])
        .arg(&state)
        .args([
            "--dst",
            "10.201.0.1",
            "--at",
            &at,
            "--window",
            "5m",
            "--json",
        ])
        .output()
        .expect("audit query");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).expect("query JSON");
    let slivers = answer["slivers"].as_array().expect("slivers");
    assert_eq!(slivers.len(), 1, "{answer}");
    assert_eq!(
        (slivers[0]["slice"].as_str(), slivers[0]["sliver"].as_str()),
        (Some("pl_alpha"), Some("alpha"))
    );
    let flows = &answer["flows"];
    let forwarded = packets_with(flows, "forwarded", "10.200.0.1")
        + packets_with(flows, "delayed", "10.200.0.1");
    let spoofed = packets_with(flows, "dropped-spoof", "10.200.0.2");
    assert_eq!(
        forwarded, sent,
        "every forwarded packet is in a flow: {answer}"
    );
    assert!(packets_with(flows, "delayed", "10.200.0.1") > 0, "{answer}");
    let total = forwarded + spoofed;
    assert!(
        spoofed >= total / 10 - 1 && spoofed <= total / 10 + 1,
        "{spoofed} of {total} spoofed"
    );
    assert!(flows
        .as_array()
        .expect("flows")
        .iter()
        .all(|f| f["dst_port"] == 12345 && f["protocol"] == 17));

    // The daemon answers the same over its socket, and names a bad field. It has no record of
    // `alpha` (the load generator played its VMM): keep its capture ring as a deleted
    // sliver's, for an hour, for the export below.
    let keep = ["--capture-retention-after-delete", "3600"];
    let (_daemon, socket) = spawn_daemon(&ns, dir.path(), &keep, true);
    let r = request(
        &socket,
        "GET",
        &audit_now_path("dst=10.201.0.1&window=5m"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["slivers"][0]["sliver"], "alpha");
    let bad = request(&socket, "GET", "/audit?dst=10.201.0.1&at=yesterday", None);
    assert_eq!(bad.status, 400);
    assert_eq!(bad.json()["field"], "at", "{}", bad.body);

    // pcapng from the capture ring: every packet, with its verdict, readable by tshark.
    let pcap = dir.path().join("alpha.pcapng");
    let out = Command::new(slicevisor_bin())
        .args(["audit", "export", "--state-dir"])
        .arg(&state)
        .arg("--pcapng")
        .arg(&pcap)
        .output()
        .expect("audit export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tshark = Command::new("tshark")
        .arg("-r")
        .arg(&pcap)
        .args(["-T", "fields", "-e", "ip.src", "-e", "frame.comment"])
        .output()
        .expect("tshark (Debian package tshark)");
    assert!(
        tshark.status.success(),
        "{}",
        String::from_utf8_lossy(&tshark.stderr)
    );
    let text = String::from_utf8_lossy(&tshark.stdout);
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count() as u64;
    assert_eq!(
        count("10.200.0.2\tverdict=dropped-spoof"),
        spoofed,
        "{text:.2000}"
    );
    assert_eq!(
        count("10.200.0.1\tverdict=forwarded") + count("10.200.0.1\tverdict=delayed"),
        sent
    );
}
