//! CPU shares and caps with real Linux guests spinning in guest user space (which runs at
//! native speed on these hosts): two slivers with `cpu_share` 1 and 3, booted on every core
//! and then pinned to one by a PATCH of `cpu_cores`, get CPU time 1:3 (± 10 %), as their
//! cgroups count it; then a 25 % cap on the second holds it at no more than 27 % of the core.

use std::time::{Duration, Instant};

use e2e::daemon::{pid_alive, Daemon, ResponseExt};
use e2e::guest::{artifacts, boot_lock, LINUX_BOOT_TIMEOUT};
use serde_json::json;

const MEASURE: Duration = Duration::from_secs(60);

fn cpu_ns(d: &Daemon, name: &str) -> u64 {
    d.call("GET", &format!("/slivers/{name}"), None).json()["cgroup"]["cpu_ns"]
        .as_u64()
        .expect("cgroup cpu_ns")
}

#[test]
fn shares_divide_a_core_and_a_cap_holds() {
    let (kernel, initrd) = artifacts();
    let _one_at_a_time = boot_lock();
    let dir = tempfile::tempdir().expect("tmp");
    let d = Daemon::start(dir.path());
    for (name, share) in [("light", 1), ("heavy", 3)] {
        let spec = json!({"slice": "pl_cpu", "kernel": kernel, "initrd": initrd, "mem_mib": 128,
                          "cpu_share": share,
                          "cmdline": "sliver_cmd=\"echo SPIN-$((6*7)); while :; do :; done\""});
        assert_eq!(
            d.call("PUT", &format!("/slivers/{name}"), Some(spec))
                .status,
            201
        );
        assert_eq!(
            d.call("POST", &format!("/slivers/{name}/start"), None)
                .status,
            200
        );
    }
    let start = Instant::now();
    for name in ["light", "heavy"] {
        let log = dir.path().join(format!("state/run/{name}/console"));
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("SPIN-42")
        {
            assert!(
                start.elapsed() < LINUX_BOOT_TIMEOUT * 2,
                "{name} never spun:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("both spinning after {:.1} s", start.elapsed().as_secs_f64());
    for name in ["light", "heavy"] {
        let pinned = d.call(
            "PATCH",
            &format!("/slivers/{name}"),
            Some(json!({"cpu_cores": "0"})),
        );
        assert_eq!(pinned.status, 200, "{}", pinned.body);
    }
    std::thread::sleep(Duration::from_secs(1));
    let before = [cpu_ns(&d, "light"), cpu_ns(&d, "heavy")];
    let t0 = Instant::now();
    std::thread::sleep(MEASURE);
    let after = [cpu_ns(&d, "light"), cpu_ns(&d, "heavy")];
    let secs = t0.elapsed().as_secs_f64();
    let (light, heavy) = (
        (after[0] - before[0]) as f64 / 1e9,
        (after[1] - before[1]) as f64 / 1e9,
    );
    let ratio = heavy / light;
    eprintln!(
        "over {secs:.1} s on one core: light {light:.2} s, heavy {heavy:.2} s of CPU, ratio {ratio:.2}"
    );
    assert!(
        (2.7..=3.3).contains(&ratio),
        "ratio {ratio:.2} (light {light:.2} s, heavy {heavy:.2} s)"
    );
    assert!(
        light + heavy > 0.9 * secs,
        "the core was not kept busy: {light:.2} + {heavy:.2} s"
    );

    // A 25 % cap on the heavy one.
    let capped = d.call("PATCH", "/slivers/heavy", Some(json!({"cpu_max_pct": 25})));
    assert_eq!(capped.status, 200, "{}", capped.body);
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ns(&d, "heavy");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let used = (cpu_ns(&d, "heavy") - before) as f64 / 1e9 / t0.elapsed().as_secs_f64();
    eprintln!("capped at 25 %: {:.1} % of a core", used * 100.0);
    assert!(used <= 0.27, "capped at 25 %, used {:.1} %", used * 100.0);
    let view = d.call("GET", "/slivers/heavy", None).json();
    assert!(
        view["cgroup"]["cpu_throttled_ns"].as_u64().unwrap_or(0) > 0,
        "{view}"
    );
    for name in ["light", "heavy"] {
        let pid = d.call("GET", &format!("/slivers/{name}"), None).json()["pid"]
            .as_u64()
            .expect("pid");
        assert_eq!(
            d.call("DELETE", &format!("/slivers/{name}"), None).status,
            204
        );
        assert!(!pid_alive(pid), "{name}'s VMM {pid} outlived its delete");
    }
    d.stop();
}
