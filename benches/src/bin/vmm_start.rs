//! VMM start to first guest instruction: CPU time of the VMM process and resident memory
//! beyond guest memory, measured by the boot-timer port that a tiny guest writes as its first
//! instruction.
//!
//! Run: `cargo build --release --workspace --bins && target/release/vmm_start [RUNS]`

use std::time::Duration;

use benches::summarize;
use e2e::run::run;
use e2e::tiny_guest::Program;

fn field(line: &str, before: &str) -> f64 {
    let idx = line
        .find(before)
        .unwrap_or_else(|| panic!("{before:?} not in {line:?}"));
    line[..idx]
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number before {before:?} in {line:?}"))
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RUNS must be a number"))
        .unwrap_or(30);
    let dir = tempfile::tempdir().expect("tmpdir");
    let kernel = Program::new()
        .boot_marker()
        .reset()
        .write_elf(dir.path(), "marker.elf");
    let (mut cpu, mut wall, mut overhead, mut rss) = (vec![], vec![], vec![], vec![]);
    let mut private = vec![];
    for _ in 0..runs {
        let out = run(
            [
                "run",
                "--kernel",
                kernel.to_str().expect("utf8"),
                "--mem-mib",
                "128",
            ],
            Duration::from_secs(60),
        );
        assert_eq!(out.code(), 0, "{out:?}");
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains("boot-timer:"))
            .unwrap_or_else(|| panic!("no boot-timer line: {}", out.stderr));
        wall.push(field(line, "ms wall"));
        cpu.push(field(line, "ms CPU"));
        rss.push(field(line, "KiB = guest"));
        overhead.push(field(line, "KiB (private"));
        private.push(field(&format!("{line} END"), "KiB) END"));
    }
    println!("VMM start -> first guest instruction ({runs} runs, 1 vCPU, 128 MiB, tiny PVH guest)");
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>9}",
        "metric", "median", "p90", "min", "max"
    );
    for (name, values) in [
        ("CPU time (ms)", &cpu),
        ("wall since VM setup (ms)", &wall),
        ("RSS total (KiB)", &rss),
        ("RSS beyond guest mem (KiB)", &overhead),
        ("  of which private (KiB)", &private),
    ] {
        let s = summarize(values);
        println!(
            "{name:<28} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
            s.median, s.p90, s.min, s.max
        );
    }
    println!("goal: CPU <= 5 ms, overhead <= 3072 KiB (Firecracker anchor: 8 ms, 5120 KiB)");
    println!("(RSS counts the binary's and libc's text, shared by every VMM process on a node)");
}
