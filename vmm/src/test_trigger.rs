//! Test-only triggers, for the end-to-end tests of the protections: with the environment
//! variable `SLICEVISOR_TEST_TRIGGER` set, the VMM misbehaves on purpose once the guest is
//! about to run (every filter in place):
//! - `seccomp`: the event loop thread makes a system call no allow-list has (`getppid`);
//! - `oom`: the VMM allocates and touches memory, 16 MiB at a time, until its cgroup's
//!   memory limit has it killed.
//!
//! The node daemon passes its environment to its VMMs, so a test sets it on a daemon of its
//! own. Unset (always, outside those tests), this does nothing.

/// The variable's name.
pub const VAR: &str = "SLICEVISOR_TEST_TRIGGER";

/// Fire the trigger the environment names, if any.
pub fn fire() {
    match std::env::var(VAR).as_deref() {
        Ok("seccomp") => {
            log::warn!("{VAR}=seccomp: making a forbidden system call");
            // SAFETY: getppid(2) has no arguments; under the filters it is refused.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        Ok("oom") => {
            log::warn!("{VAR}=oom: allocating until the memory limit is hit");
            let mut held: Vec<Vec<u8>> = Vec::new();
            loop {
                held.push(vec![1u8; 16 << 20]);
                std::hint::black_box(&held);
            }
        }
        _ => {}
    }
}
