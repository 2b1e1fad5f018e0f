//! The node daemon with real Linux guests: two slivers defined, started, reaching
//! `SLIVER-READY` and pinging their host TAP, sending TCP as fast as their shares (1:3 of a
//! low node rate; the guests here are slow) allow, counted, stopped and deleted — all inside
//! a network namespace this test creates.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e::daemon::{audit_now_path, spawn_daemon};
use e2e::daemon::{request, ResponseExt};
use e2e::guest::{artifacts, boot_lock, LINUX_BOOT_TIMEOUT};
use e2e::netns::NetNs;
use e2e::run::wait_with_timeout;
use e2e::shaping::measure_rates;
use serde_json::{json, Value};

fn wait_for_log(path: &Path, needles: &[&str], start: Instant) -> String {
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if needles.iter().all(|n| log.contains(n)) {
            return log;
        }
        assert!(
            start.elapsed() < LINUX_BOOT_TIMEOUT * 2,
            "{} never showed {needles:?}:\n{log}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn two_linux_slivers_through_their_whole_life() {
    let (kernel, initrd) = artifacts();
    let _one_at_a_time = boot_lock();
    let dir = tempfile::tempdir().expect("tmp");
    let ns = NetNs::new("svnodelx");
    // 64 kbit/s for both guests' egress, shared 1:3: low enough that both slow guests
    // (about 80 kbit/s of TCP each here, two at once) are held back by the shaper.
    let (daemon, socket) = spawn_daemon(&ns, dir.path(), &["--node-rate", "64000"], false);
    let call = |method: &str, path: &str, body: Option<Value>| {
        let bytes = body.map(|b| b.to_string().into_bytes());
        request(&socket, method, path, bytes.as_deref())
    };

    let slivers = [("alpha", 1u8), ("beta", 2u8)];
    for (name, net) in slivers {
        let share = if net == 1 { 1 } else { 3 };
        let spec = json!({
            "slice": "test_slice",
            "kernel": kernel,
            "initrd": initrd,
            "mem_mib": 256,
            "cmdline": format!("sliver_cmd=\"ping -c 3 10.20.{net}.1; nc 10.20.{net}.1 5001 < /dev/zero; sleep 600\""),
            "net": {"ipv4": format!("10.20.{net}.2/24"), "host_ipv4": format!("10.20.{net}.1"), "net_share": share}
        });
        assert_eq!(
            call("PUT", &format!("/slivers/{name}"), Some(spec)).status,
            201
        );
    }
    // A TCP sink on each host TAP address (the TAPs exist once defined): each guest sends it zeros for as long as it runs.
    for (_, net) in slivers {
        let listener = ns.run_in(move || {
            TcpListener::bind((format!("10.20.{net}.1"), 5001)).expect("bind in netns")
        });
        std::thread::spawn(move || {
            if let Ok((mut conn, _)) = listener.accept() {
                let mut buf = [0u8; 65536];
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
    }
    let start = Instant::now();
    for (name, _) in slivers {
        let r = call("POST", &format!("/slivers/{name}/start"), None);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["state"], "running");
    }
    for (name, _) in slivers {
        let log = dir.path().join(format!("state/run/{name}/console"));
        wait_for_log(
            &log,
            &[
                "SLIVER-READY 6.1.",
                "3 packets transmitted, 3 packets received",
            ],
            start,
        );
        eprintln!(
            "{name}: booted and pinged its host after {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    // Both guests now send as fast as they may: 16 and 48 kbit/s. Wait until both TCP
    // streams flow (starting nc costs the emulated guest kernel seconds).
    let taps = ["sv-alpha", "sv-beta"];
    let flowing = Instant::now();
    while measure_rates(&ns, &taps, Duration::from_secs(1))
        .iter()
        .any(|&r| r < 4_000.0)
    {
        if flowing.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = slivers
                .iter()
                .map(|(n, _)| {
                    std::fs::read_to_string(dir.path().join(format!("state/run/{n}/console")))
                        .unwrap_or_default()
                })
                .collect();
            panic!(
                "the guests' TCP streams never flowed:\n{}",
                logs.join("\n----\n")
            );
        }
    }
    let rates = measure_rates(&ns, &taps, Duration::from_secs(20));
    let beta = call("GET", "/slivers/beta", None).json();
    eprintln!(
        "achieved: alpha {:.0} bit/s, beta {:.0} bit/s (ideal 16000 / 48000); beta's shaping {}",
        rates[0], rates[1], beta["shaping"]
    );
    let ratio = rates[1] / rates[0];
    assert!(
        (2.4..=3.6).contains(&ratio),
        "1:3 shares gave 1:{ratio:.2} ({rates:?})"
    );
    let total = rates[0] + rates[1];
    assert!(
        (54_000.0..=67_000.0).contains(&total),
        "the two guests used {total:.0} of 64000 bit/s"
    );
    std::thread::sleep(Duration::from_millis(1500)); // one stats interval
    for (name, _) in slivers {
        let s = call("GET", &format!("/slivers/{name}"), None).json();
        assert_eq!(s["state"], "running", "{s}");
        let c = &s["counters"];
        assert!(c["tx_packets"].as_u64().unwrap_or(0) >= 3, "{s}");
        assert!(c["rx_packets"].as_u64().unwrap_or(0) >= 3, "{s}");
    }
    let metrics = call("GET", "/metrics", None).body;
    assert!(
        metrics
            .contains("slicevisor_sliver_tx_packets_total{sliver=\"alpha\",slice=\"test_slice\"}"),
        "{metrics}"
    );
    for (name, _) in slivers {
        let s = call("POST", &format!("/slivers/{name}/stop"), None).json();
        // Stopping asks the guest first; our guest's /init powers off when asked.
        assert_eq!(
            (s["state"].clone(), s["exit_reason"].clone()),
            (json!("stopped"), json!("guest powered off")),
            "{s}"
        );
        assert_eq!(
            call("DELETE", &format!("/slivers/{name}"), None).status,
            204
        );
        let tap = ns
            .command("ip")
            .args(["link", "show", "dev", &format!("sv-{name}")])
            .output()
            .expect("ip");
        assert!(!tap.status.success(), "TAP of {name} removed");
    }
    // The audit log answers who sent to beta's host address: beta's VMM ended its flows
    // when it stopped, and the records outlive the sliver.
    let r = call(
        "GET",
        &audit_now_path("dst=10.20.2.1&port=5001&window=10m"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    let who: Vec<(Value, Value)> = answer["slivers"]
        .as_array()
        .expect("slivers")
        .iter()
        .map(|s| (s["slice"].clone(), s["sliver"].clone()))
        .collect();
    assert_eq!(who, vec![(json!("test_slice"), json!("beta"))], "{answer}");
    let tcp_bytes: u64 = answer["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter(|f| f["direction"] == "tx" && f["protocol"] == 6)
        .map(|f| f["bytes"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        tcp_bytes >= 100_000,
        "beta's TCP bytes in its flows: {tcp_bytes}; {answer}"
    );
    let daemon = daemon.take();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let out = wait_with_timeout(daemon, Duration::from_secs(20));
    assert_eq!(out.code(), 0, "{out:?}");
}
