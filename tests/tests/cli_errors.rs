//! Bad input to `slicevisor run`: one clear line naming the problem, exit code 1, no panic.

use std::path::Path;
use std::time::Duration;

use e2e::run::{run, slicevisor_bin, Outcome};
use e2e::tiny_guest::{elf_with_segment, Program};

const TIMEOUT: Duration = Duration::from_secs(60);

fn assert_setup_error(out: &Outcome, needle: &str) {
    assert_eq!(out.code(), 1, "{out:?}");
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("slicevisor: error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "exactly one error line expected: {}",
        out.stderr
    );
    assert!(
        errors[0].contains(needle),
        "{:?} should mention {needle:?}",
        errors[0]
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    assert!(
        out.stdout.is_empty(),
        "no guest output expected: {}",
        out.stdout
    );
}

fn tiny_kernel(dir: &Path) -> String {
    Program::new()
        .reset()
        .write_elf(dir, "ok.elf")
        .display()
        .to_string()
}

fn run_with(args: &[&str]) -> Outcome {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    run(&all, TIMEOUT)
}

#[test]
fn missing_kernel() {
    let out = run_with(&["--kernel", "/nonexistent/vmlinux"]);
    assert_setup_error(
        &out,
        "--kernel /nonexistent/vmlinux: No such file or directory",
    );
}

#[test]
fn kernel_is_a_directory() {
    let out = run_with(&["--kernel", "/tmp"]);
    assert_setup_error(&out, "--kernel /tmp: is a directory");
}

#[test]
fn corrupt_kernel() {
    let dir = tempfile::tempdir().expect("tmp");
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 4096]).expect("write");
    let out = run_with(&["--kernel", garbage.to_str().expect("utf8")]);
    assert_setup_error(&out, "not an ELF vmlinux");

    let truncated = dir.path().join("truncated");
    let elf = Program::new().reset().elf();
    std::fs::write(&truncated, &elf[..100]).expect("write");
    let out = run_with(&["--kernel", truncated.to_str().expect("utf8")]);
    assert_setup_error(&out, "corrupt or unsupported ELF");
}

#[test]
fn kernel_without_pvh_note() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut elf = Program::new().reset().elf();
    elf[64 + 56] = 0; // turn the PT_NOTE header into PT_NULL
    let path = dir.path().join("nopvh");
    std::fs::write(&path, elf).expect("write");
    let out = run_with(&["--kernel", path.to_str().expect("utf8")]);
    assert_setup_error(&out, "no PVH entry note");
}

#[test]
fn kernel_too_big_for_memory() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("high");
    // Loads at 3 MiB: past the end of a 2 MiB guest.
    std::fs::write(&path, elf_with_segment(&[0xf4], 0x30_0000)).expect("write");
    let out = run_with(&["--kernel", path.to_str().expect("utf8"), "--mem-mib", "2"]);
    assert_setup_error(&out, "raise --mem-mib");
}

#[test]
fn missing_and_oversized_initrd() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = tiny_kernel(dir.path());
    let out = run_with(&["--kernel", &kernel, "--initrd", "/nonexistent/initrd"]);
    assert_setup_error(
        &out,
        "--initrd /nonexistent/initrd: No such file or directory",
    );

    let big = dir.path().join("big.cpio");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(8 << 20).expect("sparse file");
    let out = run_with(&[
        "--kernel",
        &kernel,
        "--initrd",
        big.to_str().expect("utf8"),
        "--mem-mib",
        "4",
    ]);
    assert_setup_error(&out, "--initrd");
}

#[test]
fn memory_size_limits() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = tiny_kernel(dir.path());
    let out = run_with(&["--kernel", &kernel, "--mem-mib", "0"]);
    assert_setup_error(&out, "--mem-mib 0");
    let out = run_with(&["--kernel", &kernel, "--mem-mib", "100000000"]);
    assert_setup_error(&out, "more than the host's");
}

#[test]
fn vcpu_count_limits() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = tiny_kernel(dir.path());
    let out = run_with(&["--kernel", &kernel, "--vcpus", "0"]);
    assert_setup_error(&out, "--vcpus 0");
    let out = run_with(&["--kernel", &kernel, "--vcpus", "33"]);
    assert_setup_error(&out, "--vcpus 33");
}

#[test]
fn overlong_and_invalid_command_lines() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = tiny_kernel(dir.path());
    let long = "a".repeat(2100);
    let out = run_with(&["--kernel", &kernel, "--cmdline", &long]);
    assert_setup_error(&out, "Linux accepts at most 2047");
    let out = run_with(&["--kernel", &kernel, "--cmdline", "x=\"open quote"]);
    assert_setup_error(&out, "--cmdline");
}

/// Run slicevisor in a private mount namespace where /dev is an empty tmpfs.
#[test]
fn no_dev_kvm() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = tiny_kernel(dir.path());
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --kernel {kernel}",
        slicevisor_bin().display()
    );
    let out = e2e::run::wait_with_timeout(
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) is needed"),
        TIMEOUT,
    );
    assert_setup_error(&out, "/dev/kvm does not exist");
}

/// An unprivileged user cannot open /dev/kvm (mode 0600 root on these hosts).
#[test]
fn no_permission_on_dev_kvm() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: needs root to switch to an unprivileged user");
        return;
    }
    let meta = std::fs::metadata("/dev/kvm");
    let world_usable = meta
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 != 0)
        .unwrap_or(true);
    if world_usable {
        eprintln!("SKIP: /dev/kvm is missing or usable by everybody here");
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = tiny_kernel(dir.path());
    let out = e2e::run::wait_with_timeout(
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(slicevisor_bin())
            .args(["run", "--kernel", &kernel])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux) is needed"),
        TIMEOUT,
    );
    assert_setup_error(&out, "/dev/kvm: permission denied");
}

#[test]
fn bad_disks_are_named() {
    let dir = tempfile::tempdir().expect("tmp");
    let kernel = tiny_kernel(dir.path());
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, [0u8; 513]).expect("odd");
    let locked = dir.path().join("locked.img");
    std::fs::write(&locked, [0u8; 4096]).expect("disk");
    let dir_s = dir.path().display().to_string();
    let cases = [
        (
            format!("path={dir_s}"),
            format!("--disk path={dir_s}: not a regular file"),
        ),
        (
            format!("path={}", odd.display()),
            "513 bytes is not a whole, non-zero number of 512-byte sectors".to_string(),
        ),
        (
            "path=/nonexistent/disk.img".to_string(),
            "--disk path=/nonexistent/disk.img: No such file or directory".to_string(),
        ),
        (
            "ro".to_string(),
            "--disk \"ro\": path=FILE is required".to_string(),
        ),
        (
            format!("path={},id=far-too-long-a-serial-here", locked.display()),
            "--disk id=\"far-too-long-a-serial-here\"".to_string(),
        ),
    ];
    for (spec, needle) in cases {
        let out = run_with(&["--kernel", &kernel, "--disk", &spec]);
        if spec == "ro" {
            // clap reports a value that does not parse itself, with exit code 2.
            assert_eq!(out.code(), 2, "{out:?}");
            assert!(out.stderr.contains(&needle), "{}", out.stderr);
            continue;
        }
        assert_setup_error(&out, &needle);
    }
    // A disk another process writes: the lock says so.
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&locked)
        .expect("open");
    // SAFETY: flock on a descriptor we own.
    let locked_ok = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&holder), libc::LOCK_EX) };
    assert_eq!(locked_ok, 0);
    let spec = format!("path={}", locked.display());
    let out = run_with(&["--kernel", &kernel, "--disk", &spec]);
    assert_setup_error(&out, "in use by another process (locked)");
}

#[test]
fn a_broken_supported_cpuid_table_is_named() {
    let dir = tempfile::tempdir().expect("tmpdir");
    let kernel = tiny_kernel(dir.path());
    let table = dir.path().join("cpuid");
    std::fs::write(&table, [0u8; 7]).expect("write");
    let table = table.display().to_string();
    let out = run_with(&["--kernel", &kernel, "--supported-cpuid", &table]);
    assert_setup_error(&out, &format!("--supported-cpuid {table}: 7 bytes is not"));
    // One whole entry of zeros: the right length, but not a table KVM gave.
    std::fs::write(&table, [0u8; 40]).expect("write");
    let out = run_with(&["--kernel", &kernel, "--supported-cpuid", &table]);
    assert_setup_error(
        &out,
        &format!("--supported-cpuid {table}: no entry for CPUID leaf 0x1"),
    );
    let out = run_with(&[
        "--kernel",
        &kernel,
        "--supported-cpuid",
        "/nonexistent/cpuid",
    ]);
    assert_setup_error(
        &out,
        "--supported-cpuid /nonexistent/cpuid: No such file or directory",
    );
}
