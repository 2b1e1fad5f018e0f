//! Bandwidth shares end to end: a node daemon with a node rate, slivers with shares, minimums,
//! caps and budgets, and one `sliver_loadgen` process per sliver (the real device and shaper
//! stage, fed at native speed). Rates are measured on the TAPs by the host kernel.

use std::time::{Duration, Instant};

use e2e::daemon::request;
use e2e::daemon::spawn_daemon;
use e2e::netns::NetNs;
use e2e::shaping::{
    define, inject, loadgen_report, measure_rates, shaping, spawn_loadgen, spawn_loadgen_with,
};
use serde_json::json;

const M: f64 = 1e6;

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w;
        assert!(
            err <= tol,
            "{what}: sliver {i} got {:.2} Mbit/s, ideal {:.2} (error {:.1} %); all: {:?}",
            g / M,
            w / M,
            err * 100.0,
            got.iter()
                .map(|g| (g / M * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn shares_caps_patch_and_work_conservation_across_vmm_processes() {
    let ns = NetNs::new("svshape");
    let dir = tempfile::tempdir().expect("tmp");
    let (_daemon, socket) = spawn_daemon(&ns, dir.path(), &["--node-rate", "20000000"], true);
    let state = dir.path().join("state");
    let slivers = [
        define(&socket, 1, json!({"net_share": 1})),
        define(&socket, 2, json!({"net_share": 3})),
        define(
            &socket,
            3,
            json!({"net_share": 4, "net_max_rate": 3_000_000}),
        ),
    ];
    let taps: Vec<&str> = slivers.iter().map(|s| s.tap.as_str()).collect();
    let mut gens: Vec<_> = slivers
        .iter()
        .map(|s| spawn_loadgen(&ns, s, Some(&state), 30.0))
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // 20 Mbit/s (low enough that the debug-build load generators are never CPU-bound):
    // sv3 is capped at 3, the other 17 go 1:3.
    let rates = measure_rates(&ns, &taps, Duration::from_secs(2));
    assert_close(
        "shares with a cap",
        &rates,
        &[4.25 * M, 12.75 * M, 3.0 * M],
        0.04,
    );
    let total: f64 = rates.iter().sum();
    assert!(
        total >= 0.97 * 20.0 * M,
        "link used {:.1} Mbit/s",
        total / M
    );

    // PATCH sv1 to share 5: its allocation changes within 100 ms.
    let before = shaping(&socket, "sv1")["tx_allocated_bps"].as_u64();
    let t0 = Instant::now();
    let r = request(
        &socket,
        "PATCH",
        "/slivers/sv1",
        Some(br#"{"net_share": 5}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let waited = loop {
        let now = shaping(&socket, "sv1")["tx_allocated_bps"].as_u64();
        if now != before {
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "PATCH never applied");
        std::thread::sleep(Duration::from_millis(2));
    };
    eprintln!("PATCH applied to the allocation after {waited:?}");
    assert!(
        waited <= Duration::from_millis(100),
        "PATCH took {waited:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    // 17 Mbit/s now split 5:3.
    let rates = measure_rates(&ns, &taps, Duration::from_millis(1500));
    assert_close(
        "after PATCH",
        &rates,
        &[10.625 * M, 6.375 * M, 3.0 * M],
        0.04,
    );

    // sv3's VMM dies: its 3 Mbit/s go to the others (work-conserving), still 5:3.
    let mut g3 = gens.pop().expect("gen").take();
    g3.kill().expect("kill");
    g3.wait().expect("reap");
    std::thread::sleep(Duration::from_millis(200));
    let rates = measure_rates(&ns, &taps[..2], Duration::from_millis(1500));
    assert_close("after a sliver stops", &rates, &[12.5 * M, 7.5 * M], 0.04);

    // GET and /metrics show the allocation, today's bytes and time throttled.
    let s2 = shaping(&socket, "sv2");
    assert_eq!(s2["tx_allocated_bps"].as_u64(), Some(7_500_000));
    assert!(
        s2["tx_bytes_today"].as_u64().unwrap_or(0) > 3_000_000,
        "{s2}"
    );
    assert!(s2["tx_throttled_ms"].as_u64().unwrap_or(0) > 1000, "{s2}");
    let metrics = request(&socket, "GET", "/metrics", None).body;
    for series in [
        "slicevisor_sliver_tx_allocated_bps{sliver=\"sv2\",slice=\"pl_sv2\"} 7500000",
        "slicevisor_sliver_tx_bytes_today{sliver=\"sv1\"",
        "slicevisor_sliver_tx_throttled_seconds_total{sliver=\"sv2\"",
    ] {
        assert!(
            metrics.contains(series),
            "no {series} in /metrics:\n{metrics}"
        );
    }
    for g in gens {
        let mut c = g.take();
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn a_throttled_vmm_sleeps_and_the_daily_budget_falls_back_to_the_minimum() {
    let ns = NetNs::new("svbudget");
    let dir = tempfile::tempdir().expect("tmp");
    let (_daemon, socket) = spawn_daemon(&ns, dir.path(), &[], true);
    let state = dir.path().join("state");
    // No node rate: only the sliver's own limits. 20 Mbit/s cap until 1000 KB today, then the
    // rest of the 2000 KB over the rest of the day (far below 1 Mbit/s) — so its minimum.
    let budgeted = define(
        &socket,
        1,
        json!({"net_max_rate": 20_000_000, "net_min_rate": 1_000_000,
               "net_thresh_kbyte": 1000, "net_max_kbyte": 2000}),
    );
    // A sliver capped far below what it offers waits almost all the time.
    let slow = define(&socket, 2, json!({"net_max_rate": 200_000}));
    let g1 = spawn_loadgen(&ns, &budgeted, Some(&state), 4.0);
    let g2 = spawn_loadgen(&ns, &slow, Some(&state), 4.0);
    // 1 MB at 20 Mbit/s takes 0.4 s; afterwards the budget holds it at 1 Mbit/s.
    std::thread::sleep(Duration::from_millis(1000));
    let s = shaping(&socket, "sv1");
    assert!(
        s["tx_bytes_today"].as_u64().unwrap_or(0) >= 1_000_000,
        "{s}"
    );
    assert_eq!(s["tx_allocated_bps"].as_u64(), Some(1_000_000), "{s}");
    let rates = measure_rates(
        &ns,
        &[&budgeted.tap, &slow.tap],
        Duration::from_millis(2500),
    );
    assert_close("budget and cap", &rates, &[1.0 * M, 0.2 * M], 0.05);
    // The throttled VMM waits on its timer: at most 1 % of a CPU over its run.
    let report = loadgen_report(g2.take());
    let cpu_share =
        report["cpu_ms"].as_f64().expect("cpu") / 1e3 / report["secs"].as_f64().expect("secs");
    eprintln!("throttled VMM: {:.2} % CPU", cpu_share * 100.0);
    assert!(
        cpu_share <= 0.01,
        "throttled VMM used {:.2} % CPU",
        cpu_share * 100.0
    );
    let _ = loadgen_report(g1.take());
}

#[test]
fn guest_receive_shares_the_node_rx_rate_by_weight() {
    let ns = NetNs::new("svshrx");
    let dir = tempfile::tempdir().expect("tmp");
    // 8 Mbit/s for what all guests receive, shared 1:3; the host offers each guest 8 Mbit/s.
    let (_daemon, socket) = spawn_daemon(&ns, dir.path(), &["--node-rx-rate", "8000000"], true);
    let state = dir.path().join("state");
    let slivers = [
        define(&socket, 1, json!({"net_share": 1})),
        define(&socket, 2, json!({"net_share": 3})),
    ];
    let gens: Vec<_> = slivers
        .iter()
        .map(|s| spawn_loadgen_with(&ns, s, Some(&state), 30.0, &["--rx"]))
        .collect();
    let injectors: Vec<_> = slivers
        .iter()
        .map(|s| inject(&ns, &s.tap, 8_000_000, 1000, 3.5))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let rx_bytes = |name: &str| {
        shaping(&socket, name)["rx_bytes"]
            .as_u64()
            .expect("rx_bytes")
    };
    let (a0, b0, t0) = (rx_bytes("sv1"), rx_bytes("sv2"), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (a1, b1) = (rx_bytes("sv1"), rx_bytes("sv2"));
    let secs = t0.elapsed().as_secs_f64();
    let rates = [(a1 - a0) as f64 * 8.0 / secs, (b1 - b0) as f64 * 8.0 / secs];
    assert_close("RX shares", &rates, &[2.0 * M, 6.0 * M], 0.05);
    let s2 = shaping(&socket, "sv2");
    assert_eq!(s2["rx_allocated_bps"].as_u64(), Some(6_000_000), "{s2}");
    assert!(s2["rx_throttled_ms"].as_u64().unwrap_or(0) > 500, "{s2}");
    for i in injectors {
        i.join().expect("injector");
    }
    for g in gens {
        let mut c = g.take();
        let _ = c.kill();
        let _ = c.wait();
    }
}
