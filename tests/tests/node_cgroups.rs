//! A cgroup per sliver under the daemon: the VMM runs in `slicevisor/node-HASH/NAME` beneath
//! the daemon's own cgroup in every hierarchy, joined before exec; the spec's `cpu_share`,
//! `cpu_max_pct`, `cpu_cores` and the memory allowance are what the kernel's files say
//! (cgroup v1: `cpu.shares`, `cpu.cfs_quota_us`, `cpuset.cpus`, `memory.limit_in_bytes`;
//! v2: `cpu.weight`, `cpu.max`, `cpuset.cpus`, `memory.max`); `GET` shows its CPU time;
//! `/healthz` says cgroups are on; bad CPU fields are 400s naming them; delete removes the
//! cgroup. A tiny guest that halts forever is the sliver.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::daemon::{Daemon, ResponseExt};
use serde_json::json;

/// The VMM's cgroup directory for `controller` ("" for v2), from `/proc/PID/cgroup`.
fn cgroup_dir(pid: u64, controller: &str) -> Option<PathBuf> {
    cgroup_dir_in(&format!("/proc/{pid}/cgroup"), controller)
}

/// [`cgroup_dir`] from the cgroup file `file` (a process's or a thread's).
fn cgroup_dir_in(file: &str, controller: &str) -> Option<PathBuf> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        let base = if controller.is_empty() {
            PathBuf::from("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup").join(controller)
        };
        hit.then(|| base.join(path.trim_start_matches('/')))
    })
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

#[test]
fn each_sliver_runs_in_its_own_cgroup_with_its_limits() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = e2e::tiny_guest::Program::new()
        .halt_forever()
        .write_elf(dir.path(), "halt.elf");
    let d = Daemon::start(dir.path());
    let health = d.call("GET", "/healthz", None).json();
    let version = health["protections"]["cgroups"]
        .as_str()
        .expect("cgroups")
        .to_string();
    assert!(version == "v1" || version == "v2", "{health}");

    for (field, value) in [
        ("cpu_share", json!(0)),
        ("cpu_max_pct", json!(0)),
        ("cpu_cores", json!("4095")),
        ("cpu_cores", json!("1-0")),
    ] {
        let mut spec = json!({"slice": "pl_cg", "kernel": kernel, "mem_mib": 16});
        spec[field] = value;
        let r = d.call("PUT", "/slivers/bad", Some(spec));
        assert_eq!(r.status, 400, "{field}: {}", r.body);
        assert_eq!(r.json()["field"], field);
    }

    let spec = json!({"slice": "pl_cg", "kernel": kernel, "mem_mib": 16,
                      "cpu_share": 3, "cpu_max_pct": 25, "cpu_cores": "0"});
    assert_eq!(d.call("PUT", "/slivers/c", Some(spec)).status, 201);
    let started = d.call("POST", "/slivers/c/start", None);
    assert_eq!(started.status, 200, "{}", started.body);
    let pid = started.json()["pid"].as_u64().expect("pid");
    let memory_limit = ((16u64 << 20) + (256 << 20)).to_string();
    let dirs: Vec<PathBuf> = if version == "v1" {
        let dir_of = |c: &str| cgroup_dir(pid, c).unwrap_or_else(|| panic!("no {c} line"));
        let (cpu, cpuset, memory) = (dir_of("cpu"), dir_of("cpuset"), dir_of("memory"));
        assert_eq!(read(&cpu, "cpu.shares"), "3072");
        assert_eq!(read(&cpu, "cpu.cfs_period_us"), "100000");
        assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "25000");
        assert_eq!(read(&cpuset, "cpuset.cpus"), "0");
        assert_eq!(read(&memory, "memory.limit_in_bytes"), memory_limit);
        assert_eq!(read(&dir_of("pids"), "pids.max"), "512");
        ["cpu", "cpuacct", "cpuset", "memory", "pids"]
            .into_iter()
            .map(dir_of)
            .collect()
    } else {
        let v2 = cgroup_dir(pid, "").expect("v2 line");
        assert_eq!(read(&v2, "cpu.weight"), "300");
        assert_eq!(read(&v2, "cpu.max"), "25000 100000");
        assert_eq!(read(&v2, "cpuset.cpus"), "0");
        assert_eq!(read(&v2, "memory.max"), memory_limit);
        vec![v2]
    };
    for d in &dirs {
        assert!(
            d.ends_with("c")
                && d.parent()
                    .and_then(Path::parent)
                    .is_some_and(|p| p.ends_with("slicevisor")),
            "{}",
            d.display()
        );
        // The daemon's own cgroup is the parent of `slicevisor`.
        let daemon_cg = d
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("parents");
        let daemon_line = std::fs::read_to_string(daemon_cg.join("cgroup.procs")).expect("procs");
        assert!(!daemon_line.split_whitespace().any(|p| p == pid.to_string()));
    }
    // Every thread of the keeper and of the VMM it forked is in the sliver's cgroup, in each
    // hierarchy (the keeper joined by moving its one thread before exec). The keeper forks
    // the VMM, which spawns its vCPU and other threads, after the reply.
    let tasks = || -> Vec<PathBuf> {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let vmm = children.split_whitespace().next().map(str::to_string);
        std::iter::once(pid.to_string())
            .chain(vmm)
            .flat_map(|p| {
                std::fs::read_dir(format!("/proc/{p}/task"))
                    .into_iter()
                    .flatten()
            })
            .map(|t| t.expect("task").path())
            .collect()
    };
    let start = Instant::now();
    while tasks().len() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the VMM never ran its threads: {:?}",
            tasks()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for task in tasks() {
        let file = task.join("cgroup");
        let file = file.to_str().expect("utf8");
        for (d, controller) in dirs
            .iter()
            .zip(["cpu", "cpuacct", "cpuset", "memory", "pids"])
        {
            let controller = if version == "v1" { controller } else { "" };
            assert_eq!(cgroup_dir_in(file, controller).as_ref(), Some(d), "{file}");
        }
    }
    // CPU limits change on the running sliver.
    let patched = d.call(
        "PATCH",
        "/slivers/c",
        Some(json!({"cpu_share": 5, "cpu_max_pct": 50})),
    );
    assert_eq!(patched.status, 200, "{}", patched.body);
    if version == "v1" {
        let cpu = cgroup_dir(pid, "cpu").expect("cpu");
        assert_eq!(read(&cpu, "cpu.shares"), "5120");
        assert_eq!(read(&cpu, "cpu.cfs_quota_us"), "50000");
    } else {
        let v2 = cgroup_dir(pid, "").expect("v2");
        assert_eq!(read(&v2, "cpu.weight"), "500");
        assert_eq!(read(&v2, "cpu.max"), "50000 100000");
    }
    let bad = d.call("PATCH", "/slivers/c", Some(json!({"cpu_max_pct": 0})));
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["field"], "cpu_max_pct");
    assert_eq!(
        d.call("GET", "/slivers/c", None).json()["spec"]["cpu_max_pct"],
        50
    );
    // The guest's vCPU runs (halting): the cgroup counts the VMM's CPU time.
    let start = Instant::now();
    loop {
        let view = d.call("GET", "/slivers/c", None).json();
        if view["cgroup"]["cpu_ns"].as_u64().unwrap_or(0) > 0 {
            assert!(
                view["cgroup"]["memory_bytes"].as_u64().unwrap_or(0) > 0,
                "{view}"
            );
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{view}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(d.call("POST", "/slivers/c/stop", None).status, 200);
    assert_eq!(d.call("DELETE", "/slivers/c", None).status, 204);
    for d in &dirs {
        assert!(!d.exists(), "{} left after delete", d.display());
    }
    d.stop();
}
