//! KVM-level tests with tiny hand-made guests: the real `slicevisor run` on /dev/kvm.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use e2e::run::{command, run, wait_with_timeout, ChildGuard};
use e2e::tiny_guest::Program;

/// Tiny guests run a few dozen emulated instructions; a run is well under a second here.
const TIMEOUT: Duration = Duration::from_secs(60);

fn kvm_available() -> bool {
    let ok = std::path::Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIP: /dev/kvm does not exist on this machine; KVM tests cannot run");
    }
    ok
}

fn boot(program: &Program, extra: &[&str]) -> e2e::run::Outcome {
    let dir = tempfile::tempdir().expect("tmpdir");
    let kernel = program.write_elf(dir.path(), "tiny.elf");
    let mut args = vec![
        "run".to_string(),
        "--kernel".into(),
        kernel.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    run(&args, TIMEOUT)
}

#[test]
fn serial_output_then_reset_is_a_clean_power_off() {
    if !kvm_available() {
        return;
    }
    let out = boot(
        &Program::new()
            .print("Hi from tiny\n")
            .reset()
            .halt_forever(),
        &[],
    );
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "Hi from tiny\n");
    assert!(
        out.stderr.contains("VM ended: guest powered off"),
        "{}",
        out.stderr
    );
}

#[test]
fn boot_timer_reports_cpu_time_and_memory_overhead() {
    if !kvm_available() {
        return;
    }
    let out = boot(&Program::new().boot_marker().reset(), &[]);
    assert_eq!(out.code(), 0, "{out:?}");
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("boot-timer: guest running after"))
        .unwrap_or_else(|| panic!("no boot-timer line in {}", out.stderr));
    assert!(
        line.contains("ms CPU") && line.contains("VMM overhead"),
        "{line}"
    );
}

#[test]
fn triple_fault_ends_with_its_own_exit_code() {
    if !kvm_available() {
        return;
    }
    let out = boot(&Program::new().print("x").triple_fault(), &[]);
    assert_eq!(out.code(), 3, "{out:?}");
    assert!(out.stderr.contains("triple fault"), "{}", out.stderr);
    assert_eq!(out.stdout, "x");
}

#[test]
fn kernel_panic_line_ends_the_vm_with_exit_code_2() {
    if !kvm_available() {
        return;
    }
    let program = Program::new()
        .print("Kernel panic - not syncing: tiny test panic\n")
        .halt_forever();
    let out = boot(&program, &[]);
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr
            .contains("guest kernel panic: Kernel panic - not syncing: tiny test panic"),
        "{}",
        out.stderr
    );
}

fn stop_halted_guest_with(signal: libc::c_int, name: &str, vcpus: &str) {
    let dir = tempfile::tempdir().expect("tmpdir");
    let kernel = Program::new()
        .boot_marker()
        .halt_forever()
        .write_elf(dir.path(), "halt.elf");
    let mut child = ChildGuard::new(
        command([
            "run",
            "--kernel",
            kernel.to_str().expect("utf8"),
            "--vcpus",
            vcpus,
        ])
        .spawn()
        .expect("spawn"),
    );
    // Wait until the guest has run (its marker is logged), so the vCPU is in HLT.
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "slicevisor exited before the guest ran: {seen}");
        seen.push_str(&line);
        if line.contains("boot-timer") {
            break;
        }
    }
    let pid = child.id() as libc::pid_t;
    if let Some((tasks, sharing)) = fd_table_sharers(pid) {
        let want: usize = vcpus.parse().expect("vCPU count");
        assert!(
            tasks > want,
            "{tasks} tasks: the main thread and {want} vCPUs expected"
        );
        assert!(
            sharing.is_empty(),
            "threads {sharing:?} share the event loop's descriptor table (vmm::fd_table)"
        );
    }
    // SAFETY: sending a signal to our own child process by pid.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0);
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        rest
    });
    let out = wait_with_timeout(child.take(), TIMEOUT);
    let rest = rest.join().expect("stderr reader");
    assert_eq!(out.code(), 0, "{seen}{rest} {out:?}");
    assert!(
        rest.contains(&format!("VM ended: stopped by {name}")),
        "{rest}"
    );
}

/// The tasks of process `pid`, and those of them (but the main thread) whose descriptor
/// table is the main thread's: kcmp(2) `KCMP_FILES` is 0 for tasks sharing one. `None`
/// (said on stderr) where kcmp(2) is missing or not permitted (no CONFIG_KCMP, a container
/// without CAP_SYS_PTRACE).
fn fd_table_sharers(pid: libc::pid_t) -> Option<(usize, Vec<libc::pid_t>)> {
    const KCMP_FILES: libc::c_long = 2;
    let tids: Vec<libc::pid_t> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let mut sharing = Vec::new();
    for &tid in tids.iter().filter(|&&tid| tid != pid) {
        // SAFETY: kcmp(2) compares two tasks' resources by id; no memory is passed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_kcmp,
                libc::c_long::from(pid),
                libc::c_long::from(tid),
                KCMP_FILES,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            let missing = [libc::ENOSYS, libc::EPERM, libc::EACCES];
            if missing.contains(&e.raw_os_error().unwrap_or(0)) {
                eprintln!("SKIP the descriptor-table check: kcmp(2): {e}");
                return None;
            }
            panic!("kcmp({pid}, {tid}): {e}");
        }
        if rc == 0 {
            sharing.push(tid);
        }
    }
    Some((tids.len(), sharing))
}

#[test]
fn halted_guest_stops_cleanly_on_sigint() {
    if !kvm_available() {
        return;
    }
    stop_halted_guest_with(libc::SIGINT, "SIGINT", "1");
}

#[test]
fn four_vcpus_stop_cleanly_on_sigterm() {
    if !kvm_available() {
        return;
    }
    stop_halted_guest_with(libc::SIGTERM, "SIGTERM", "4");
}

#[test]
fn four_vcpus_power_off_when_the_boot_cpu_resets() {
    if !kvm_available() {
        return;
    }
    let out = boot(&Program::new().print("smp\n").reset(), &["--vcpus", "4"]);
    assert_eq!(out.code(), 0, "{out:?}");
    assert_eq!(out.stdout, "smp\n");
}

#[test]
fn host_quirks_are_detected_and_logged() {
    if !kvm_available() {
        return;
    }
    let program = Program::new().reset();
    let pvm = std::fs::read_to_string("/sys/module/kvm_pvm/parameters/pvm_native")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    let auto = boot(&program, &[]);
    assert_eq!(auto.code(), 0, "{auto:?}");
    assert_eq!(
        auto.stderr.contains("PVM-native KVM host detected"),
        pvm,
        "{}",
        auto.stderr
    );
    assert_eq!(auto.stderr.contains("clearcpuid=smap"), pvm);
    let off = boot(&program, &["--host-quirks", "off"]);
    assert!(
        off.stderr.contains("disabled by --host-quirks off"),
        "{}",
        off.stderr
    );
    assert!(!off.stderr.contains("clearcpuid"), "{}", off.stderr);
    let on = boot(&program, &["--host-quirks", "on"]);
    assert!(on.stderr.contains("noxsave clearcpuid="), "{}", on.stderr);
}

/// The KVM ioctls `slicevisor run` makes for a tiny guest with `extra` flags, by name, as
/// strace decodes them from `<linux/kvm.h>`.
fn kvm_ioctls_of_a_run(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tmpdir");
    let kernel = Program::new()
        .boot_marker()
        .reset()
        .write_elf(dir.path(), "tiny.elf");
    let trace = dir.path().join("ioctls");
    let out = std::process::Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=ioctl", "-o"])
        .arg(&trace)
        .arg(e2e::run::slicevisor_bin())
        .args(["run", "--kernel"])
        .arg(&kernel)
        .args(extra)
        .output()
        .expect("strace (installed by scripts/test.sh)");
    assert!(out.status.success(), "{out:?}");
    std::fs::read_to_string(&trace).expect("strace output")
}

#[test]
fn a_saved_cpuid_table_spares_the_vmm_asking_kvm() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tmpdir");
    let table = dir.path().join(vmm::arch::cpuid_table::FILE_NAME);
    vmm::arch::cpuid_table::save(&table).expect("save the table as the node daemon does");
    let asked = kvm_ioctls_of_a_run(&["--vcpus", "2"]);
    assert!(asked.contains("KVM_GET_SUPPORTED_CPUID"), "{asked}");
    let table = table.to_str().expect("utf8");
    let handed = kvm_ioctls_of_a_run(&["--vcpus", "2", "--supported-cpuid", table]);
    assert!(!handed.contains("KVM_GET_SUPPORTED_CPUID"), "{handed}");
    // Every vCPU still gets its CPUID, from the table.
    assert_eq!(handed.matches("KVM_SET_CPUID2").count(), 2, "{handed}");
}
