//! Wall time of a real Linux guest boot under slicevisor: VMM start to the guest's
//! `SLIVER-READY` line, and to power-off (after `sliver_cmd="true"`).
//!
//! Run: `bash guest-kernel/build.sh && cargo build --release --workspace --bins && target/release/linux_boot [RUNS]`

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use benches::summarize;
use e2e::guest::{artifacts, LINUX_BOOT_TIMEOUT};
use e2e::run::{command, wait_with_timeout, ChildGuard};

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RUNS must be a number"))
        .unwrap_or(3);
    let (kernel, initrd) = artifacts();
    let (mut init, mut ready, mut total) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let start = Instant::now();
        let mut child = ChildGuard::new(
            command([
                "run",
                "--mem-mib",
                "256",
                "--cmdline",
                "sliver_cmd=\"true\"",
                "--kernel",
            ])
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn slicevisor"),
        );
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let (mut init_at, mut ready_at) = (None, None);
        for line in stdout.lines() {
            let line = line.expect("read console");
            if line.contains("Run /init as init process") && init_at.is_none() {
                init_at = Some(start.elapsed());
            }
            if line.starts_with("SLIVER-READY ") && ready_at.is_none() {
                ready_at = Some(start.elapsed());
            }
            assert!(start.elapsed() < LINUX_BOOT_TIMEOUT, "boot {i} overran");
        }
        let out = wait_with_timeout(child.take(), Duration::from_secs(30));
        assert_eq!(out.code(), 0, "boot {i}: {out:?}");
        let ready_at = ready_at.expect("no SLIVER-READY line");
        init.push(init_at.expect("no 'Run /init' line").as_secs_f64());
        ready.push(ready_at.as_secs_f64());
        total.push(start.elapsed().as_secs_f64());
        eprintln!(
            "boot {i}: SLIVER-READY after {:.1} s, powered off after {:.1} s",
            ready_at.as_secs_f64(),
            start.elapsed().as_secs_f64()
        );
    }
    let (r, t) = (summarize(&ready), summarize(&total));
    println!("Linux 6.1 guest, 1 vCPU, 256 MiB, {runs} boots");
    println!(
        "{:<26} {:>8} {:>8} {:>8}",
        "seconds", "median", "min", "max"
    );
    println!(
        "{:<26} {:>8.1} {:>8.1} {:>8.1}",
        "start -> SLIVER-READY", r.median, r.min, r.max
    );
    println!(
        "{:<26} {:>8.1} {:>8.1} {:>8.1}",
        "start -> powered off", t.median, t.min, t.max
    );
}
