//! What the protections cost a VMM's start: a tiny guest that writes the boot-timer port as
//! its first instruction and then resets, run side by side (alternating) bare (`--seccomp
//! off`, no jail, no cgroup) and protected (`--jail`, the seccomp filters, a cgroup with the
//! daemon's limits made for it and joined before exec). Reported: the CPU time of the whole
//! process tree from exec to exit (wait4's rusage: the keeper and the VMM it reaps), the VMM's
//! own CPU to the guest's first instruction (the boot-timer line; for a jailed VMM this counts
//! from the fork), and the bench's CPU to make and remove the cgroup.
//!
//! Run (root): `cargo build --release --workspace --bins && target/release/protections [RUNS]`

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use benches::summarize;
use e2e::run::slicevisor_bin;
use e2e::tiny_guest::Program;
use node_daemon::sliver_cgroups::{CgroupLimits, Cgroups, Layout};

/// The ids the protected VMM runs as (the daemon's default range).
const JAIL_ID: u32 = 965_000;

/// "median (p90 x)" of `v`.
fn cell(v: &[f64]) -> String {
    let s = summarize(v);
    format!("{:.2} (p90 {:.2})", s.median, s.p90)
}

fn cpu_ms(ru: &libc::rusage) -> f64 {
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

fn thread_cpu_ms() -> f64 {
    // SAFETY: getrusage(2) writes into the struct we pass.
    let mut ru = unsafe { std::mem::zeroed::<libc::rusage>() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    cpu_ms(&ru)
}

/// One run: (process-tree CPU ms, VMM CPU ms to the first guest instruction, wall ms).
#[expect(
    clippy::zombie_processes,
    reason = "reaped by wait4 below, which also gives its rusage"
)]
fn one(mut cmd: Command) -> (f64, f64, f64) {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn slicevisor run");
    let pid = child.id() as libc::pid_t;
    let stderr = child.stderr;
    let mut status = 0;
    // SAFETY: rusage is plain data filled in by wait4.
    let mut ru = unsafe { std::mem::zeroed::<libc::rusage>() };
    let text = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut text = String::new();
            if let Some(mut e) = stderr {
                let _ = std::io::Read::read_to_string(&mut e, &mut text);
            }
            text
        });
        // SAFETY: wait4(2) on our own child, writing its status and rusage.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        assert_eq!(waited, pid, "wait4");
        reader.join().expect("stderr reader")
    });
    let wall = start.elapsed().as_secs_f64() * 1e3;
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "status {status}: {text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("boot-timer:"))
        .unwrap_or_else(|| panic!("no boot-timer line: {text}"));
    let idx = line.find(" ms CPU").expect("ms CPU");
    let to_first: f64 = line[..idx]
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .expect("CPU figure");
    (cpu_ms(&ru), to_first, wall)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("RUNS must be a number"))
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("tmpdir");
    let kernel = Program::new()
        .boot_marker()
        .reset()
        .write_elf(dir.path(), "marker.elf");
    let cgroups = Layout::detect(std::path::Path::new("/sys/fs/cgroup"))
        .map(|l| Cgroups::new(l, "bench-protections".into()))
        .and_then(|c| c.check().map(|()| c))
        .expect("cgroups: run as root on a host with cgroup v1 or v2");
    let limits = CgroupLimits {
        cpu_share: 1,
        cpu_max_pct: None,
        cpu_cores: None,
        memory_bytes: (128 << 20) + (256 << 20),
    };
    let base = |extra: &[&str]| {
        let mut cmd = Command::new(slicevisor_bin());
        cmd.args(["run", "--kernel"])
            .arg(&kernel)
            .args(["--mem-mib", "128"])
            .args(extra);
        cmd
    };
    let jail = format!("{JAIL_ID}:{JAIL_ID}");
    // Each round runs every variant once, in turn, so drift affects all alike.
    let variants: [(&str, Vec<&str>); 4] = [
        ("bare (--seccomp off)", vec!["--seccomp", "off"]),
        ("seccomp filters only", vec!["--seccomp", "kill"]),
        ("jail only", vec!["--jail", &jail, "--seccomp", "off"]),
        (
            "jail + seccomp + cgroup",
            vec!["--jail", &jail, "--seccomp", "kill"],
        ),
    ];
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); variants.len()];
    let mut cgroup_ms = Vec::new();
    for _ in 0..runs {
        for (i, (_, flags)) in variants.iter().enumerate() {
            let mut cmd = base(flags);
            let last = i == variants.len() - 1;
            if last {
                let before = thread_cpu_ms();
                cgroups.apply("bench", &limits).expect("cgroup");
                let join = cgroups.joiner("bench");
                cgroup_ms.push(thread_cpu_ms() - before);
                // SAFETY: the closure runs between fork and exec and only calls
                // `Joiner::join_self`, which is async-signal-safe and allocates nothing.
                unsafe {
                    cmd.pre_exec(move || join.join_self());
                }
            }
            results[i].push(one(cmd));
            if last {
                let before = thread_cpu_ms();
                cgroups.remove("bench");
                if let Some(made) = cgroup_ms.last_mut() {
                    *made += thread_cpu_ms() - before;
                }
            }
        }
    }
    cgroups.tidy();
    println!(
        "VMM start with and without protections ({runs} rounds, variants in turn; tiny guest: boot marker, reset; 128 MiB)"
    );
    println!(
        "{:<26} | {:>22} | {:>22} | {:>22}",
        "", "tree CPU exec->exit ms", "VMM CPU to 1st instr ms", "wall spawn->exit ms"
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for ((name, _), r) in variants.iter().zip(&results) {
        let col = |f: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> { r.iter().map(f).collect() };
        println!(
            "{name:<26} | {:>22} | {:>22} | {:>22}",
            cell(&col(|r| r.0)),
            cell(&col(|r| r.1)),
            cell(&col(|r| r.2))
        );
    }
    println!(
        "{:<26} | {:>22}",
        "cgroup make+remove (daemon)",
        cell(&cgroup_ms)
    );
    let tree = |i: usize| median(results[i].iter().map(|r| r.0).collect());
    let extra = tree(3) - tree(0) + median(cgroup_ms.clone());
    println!(
        "protections' CPU cost per start: {extra:+.2} ms (goal <= +2 ms): seccomp {:+.2}, jail {:+.2}",
        tree(1) - tree(0),
        tree(2) - tree(0)
    );
}
