//! VMM start to first guest instruction: CPU time of the VMM process and resident memory
//! beyond guest memory, measured by the boot-timer port that a tiny guest writes as its first
//! instruction. Three ways, in turn: `slicevisor-vmm run --supported-cpuid TABLE` (what the
//! node daemon starts: KVM's CPUID table saved once, as the daemon does at its start),
//! `slicevisor-vmm run` (asking KVM for the table itself) and `slicevisor run` (the full
//! binary, by hand).
//!
//! Run: `cargo build --release --workspace --bins && cargo rustc --release -p slicevisor --bin
//! slicevisor-vmm -- -C target-feature=+crt-static && target/release/vmm_start [RUNS]` (the
//! second step links the VMM static-pie, as `scripts/demo.sh` does; each binary's linking is
//! printed with its rows).

use std::time::Duration;

use benches::summarize;
use e2e::run::{slicevisor_bin, vmm_bin, wait_with_timeout};
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

/// How the ELF executable at `path` is linked: with a program interpreter (PT_INTERP, the
/// dynamic loader) or without (static). ELF-64 header: e_phoff at 0x20, e_phentsize at 0x36,
/// e_phnum at 0x38; each program header starts with p_type (u32), PT_INTERP = 3 (elf(5)).
fn linkage(path: &std::path::Path) -> &'static str {
    let elf = std::fs::read(path).expect("reading the VMM binary");
    let word = |at: usize, n: usize| {
        elf[at..at + n]
            .iter()
            .rev()
            .fold(0usize, |v, b| v << 8 | usize::from(*b))
    };
    assert_eq!(
        &elf[..5],
        b"\x7fELF\x02",
        "{} is not a 64-bit ELF",
        path.display()
    );
    let (phoff, phentsize, phnum) = (word(0x20, 8), word(0x36, 2), word(0x38, 2));
    let interp = (0..phnum).any(|i| word(phoff + i * phentsize, 4) == 3);
    if interp {
        "dynamically linked"
    } else {
        "static"
    }
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
    let table = dir.path().join(vmm::arch::cpuid_table::FILE_NAME);
    vmm::arch::cpuid_table::save(&table).expect("saving KVM's CPUID table");
    let table = table.to_str().expect("utf8").to_owned();
    let binaries = [
        (
            "slicevisor-vmm run --supported-cpuid",
            vmm_bin(),
            vec!["--supported-cpuid", &table],
        ),
        ("slicevisor-vmm run", vmm_bin(), vec![]),
        ("slicevisor run", slicevisor_bin(), vec![]),
    ];
    let mut rows: Vec<[Vec<f64>; 5]> = vec![Default::default(); binaries.len()];
    for run in 0..runs {
        // Each way goes first in turn.
        for k in 0..binaries.len() {
            let i = (run + k) % binaries.len();
            let ((_, bin, extra), row) = (&binaries[i], &mut rows[i]);
            let child = std::process::Command::new(bin)
                .args(["run", "--kernel", kernel.to_str().expect("utf8")])
                .args(["--mem-mib", "128"])
                .args(extra)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawning the VMM");
            let out = wait_with_timeout(child, Duration::from_secs(60));
            assert_eq!(out.code(), 0, "{out:?}");
            let line = out
                .stderr
                .lines()
                .find(|l| l.contains("boot-timer:"))
                .unwrap_or_else(|| panic!("no boot-timer line: {}", out.stderr));
            row[0].push(field(line, "ms CPU"));
            row[1].push(field(line, "ms wall"));
            row[2].push(field(line, "KiB = guest"));
            row[3].push(field(line, "KiB (private"));
            row[4].push(field(&format!("{line} END"), "KiB) END"));
        }
    }
    println!("VMM start -> first guest instruction ({runs} runs, 1 vCPU, 128 MiB, tiny PVH guest)");
    for ((name, bin, _), row) in binaries.iter().zip(&rows) {
        println!("{name}: {} ({})", bin.display(), linkage(bin));
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>9}",
            "", "median", "p90", "min", "max"
        );
        for (metric, values) in [
            "CPU time (ms)",
            "wall since VM setup (ms)",
            "RSS total (KiB)",
            "RSS beyond guest mem (KiB)",
            "  of which private (KiB)",
        ]
        .iter()
        .zip(row)
        {
            let s = summarize(values);
            println!(
                "{metric:<28} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                s.median, s.p90, s.min, s.max
            );
        }
    }
    println!("goal: CPU <= 5 ms, overhead <= 3072 KiB (Firecracker anchor: 8 ms, 5120 KiB)");
    println!("(RSS counts the binary's and libc's text, shared by every VMM process on a node)");
}
