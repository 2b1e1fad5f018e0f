//! Running the `slicevisor` binary from tests and benchmarks.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The `slicevisor` binary of the same build profile as the running program.
///
/// Tests run from `target/<profile>/deps/`, benchmark binaries from `target/<profile>/`; the
/// binary is in `target/<profile>/`. README's test command builds it first
/// (`cargo build --workspace --bins`).
pub fn slicevisor_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("executable has a directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().expect("deps/ has a parent")
    } else {
        dir
    };
    let bin = profile_dir.join("slicevisor");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (README's test command does)",
        bin.display()
    );
    bin
}

/// `slicevisor-vmm` (`slicevisor run` alone, what the node daemon starts per sliver), beside
/// [`slicevisor_bin`].
pub fn vmm_bin() -> PathBuf {
    let bin = slicevisor_bin().with_file_name("slicevisor-vmm");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `slicevisor` with `args`, stdin from /dev/null, stdout and stderr captured.
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(slicevisor_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What a finished run printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit status.
    pub status: ExitStatus,
    /// Guest console.
    pub stdout: String,
    /// VMM log and errors.
    pub stderr: String,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Outcome {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {self:?}"))
    }
}

/// Read a pipe to its end on a thread; a pipe the caller already took reads as empty.
fn drain(r: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Wait for `child` at most `timeout` (collecting whatever pipes it still has); kill it and panic (with its output) if it overruns.
pub fn wait_with_timeout(mut child: Child, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Outcome {
                status,
                stdout: out.join().expect("stdout"),
                stderr: err.join().expect("stderr"),
                elapsed: start.elapsed(),
            };
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "slicevisor did not finish within {timeout:?}\n--- stdout\n{}\n--- stderr\n{}",
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run `slicevisor` with `args` to completion within `timeout`.
pub fn run<I, S>(args: I, timeout: Duration) -> Outcome
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let child = command(args).spawn().expect("spawning slicevisor");
    wait_with_timeout(child, timeout)
}

/// A child that is killed (and reaped) if the test fails before waiting for it, so a failed
/// test never leaves a VM running.
#[derive(Debug)]
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Guard `child`.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// Hand the child over (e.g. to [`wait_with_timeout`]).
    pub fn take(mut self) -> Child {
        self.0.take().expect("child already taken")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl std::ops::Deref for ChildGuard {
    type Target = Child;

    fn deref(&self) -> &Child {
        self.0.as_ref().expect("child already taken")
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("child already taken")
    }
}

/// The SHA-256 of file `path` in hex, by `sha256sum` (coreutils); empty if it cannot be read.
pub fn sha256sum(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils)");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
