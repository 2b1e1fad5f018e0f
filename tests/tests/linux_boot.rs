//! End-to-end: the project's real Linux 6.1 guest boots under slicevisor on this host's KVM,
//! runs a command, and powers off. Each boot costs ~40 s here (guest ring 0 is emulated).

use e2e::guest::{artifacts, boot_lock, LINUX_BOOT_TIMEOUT};
use e2e::run::run;

fn boot(cmdline: &str, vcpus: &str) -> e2e::run::Outcome {
    let (kernel, initrd) = artifacts();
    let _one_at_a_time = boot_lock();
    let out = run(
        [
            "run",
            "--kernel",
            kernel.to_str().expect("utf8"),
            "--initrd",
            initrd.to_str().expect("utf8"),
            "--mem-mib",
            "256",
            "--vcpus",
            vcpus,
            "--cmdline",
            cmdline,
        ],
        LINUX_BOOT_TIMEOUT,
    );
    eprintln!(
        "boot with {vcpus} vCPU(s) took {:.1} s",
        out.elapsed.as_secs_f64()
    );
    out
}

#[test]
fn linux_guest_boots_runs_a_command_and_powers_off() {
    // Two vCPUs: the guest finds both in our MP table and brings the second up with INIT/SIPI
    // (on PVM hosts only once KVM's PV send-IPI is hidden, which the VMM does).
    let out = boot("sliver_cmd=\"echo hello from $(hostname); nproc\"", "2");
    assert_eq!(out.code(), 0, "{out:?}");
    let ready = out
        .stdout
        .lines()
        .find(|l| l.starts_with("SLIVER-READY "))
        .unwrap_or_else(|| panic!("no SLIVER-READY line:\n{}", out.stdout));
    assert!(ready.starts_with("SLIVER-READY 6.1."), "{ready}");
    let lines: Vec<&str> = out.stdout.lines().map(str::trim_end).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("hello from ")),
        "{}",
        out.stdout
    );
    // The guest found our MP table (CPUs, IOAPIC, IRQ routing).
    assert!(
        out.stdout.contains("found SMP MP-table at [mem 0x0009fc00"),
        "{}",
        out.stdout
    );
    assert!(
        lines.contains(&"2"),
        "nproc should print 2:\n{}",
        out.stdout
    );
    assert!(lines.contains(&"SLIVER-CMD-EXIT 0"), "{}", out.stdout);
    assert!(
        out.stderr.contains("VM ended: guest powered off"),
        "{}",
        out.stderr
    );
}

#[test]
fn linux_guest_panic_is_reported_with_exit_code_2() {
    // No init at that path, and the initramfs has no fallback: the kernel panics.
    let out = boot("rdinit=/does-not-exist init=/does-not-exist", "1");
    assert_eq!(out.code(), 2, "{out:?}");
    assert!(
        out.stderr
            .contains("guest kernel panic: Kernel panic - not syncing"),
        "{}",
        out.stderr
    );
}
