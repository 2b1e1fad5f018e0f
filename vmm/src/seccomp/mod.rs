//! seccomp-bpf filters, one allow-list per kind of VMM thread ([`allow_lists`]), built with
//! rust-vmm's `seccompiler` and installed by each thread on itself before the guest runs its
//! first instruction: vCPU threads before their first KVM_RUN, the event loop before it opens
//! the vCPUs' start gate, the audit writer when it starts.
//!
//! A forbidden call raises SIGSYS ([`sigsys`]); the handler writes `seccomp: syscall NAME` as
//! the exit record (`--exit-file`) and on stderr, and ends the process with
//! [`crate::exit::EXIT_SECCOMP`]. `--seccomp log` lets forbidden calls through and has the
//! kernel log them (SECCOMP_RET_LOG, seen in the kernel log), for finding a missing entry;
//! `--seccomp off` installs nothing.
//!
//! Sources: seccomp(2), Documentation/userspace-api/seccomp_filter.rst; Firecracker's
//! per-thread filters (`src/vmm/src/seccomp.rs`, `resources/seccomp/`).

mod allow_lists;
mod sigsys;
pub mod syscall_names;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What a forbidden system call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SeccompMode {
    /// End the VMM, recording `seccomp: syscall NAME` as its exit reason.
    #[default]
    Kill,
    /// Let the call through and have the kernel log it (debugging an allow-list).
    Log,
    /// No filters.
    Off,
}

/// The kinds of VMM thread, each with its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread: KVM_RUN and the device work an MMIO exit does inline.
    Vcpu,
    /// The main thread once the VM runs: the event loop and its devices.
    EventLoop,
    /// The audit log's writer thread.
    AuditWriter,
    /// The jail's keeper process (waits for the VMM, forwards signals).
    Keeper,
}

/// Errors preparing or installing the filters; each names the thread kind or file.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An allow-list could not be compiled.
    #[error("seccomp: building the {kind:?} filter: {source}")]
    Build {
        /// Whose filter.
        kind: ThreadKind,
        /// What seccompiler said.
        source: seccompiler::Error,
    },
    /// The kernel refused a filter.
    #[error("seccomp: installing the {kind:?} filter: {source}")]
    Install {
        /// Whose filter.
        kind: ThreadKind,
        /// What seccompiler said.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler or its exit file could not be set up.
    #[error("seccomp: {what}: {source}")]
    Setup {
        /// The step, with its path.
        what: String,
        /// What failed.
        source: std::io::Error,
    },
}

/// The compiled filters of this process (absent with `--seccomp off`).
#[derive(Debug)]
struct Filters {
    vcpu: BpfProgram,
    event_loop: BpfProgram,
    audit_writer: BpfProgram,
    keeper: BpfProgram,
}

static FILTERS: OnceLock<Option<Filters>> = OnceLock::new();

fn compile(kind: ThreadKind, mode: SeccompMode) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build { kind, source };
    let rules = allow_lists::rules(kind).map_err(|e| build(seccompiler::Error::Backend(e)))?;
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(
        rules.into_iter().collect::<BTreeMap<_, _>>(),
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| build(seccompiler::Error::Backend(e)))?;
    filter
        .try_into()
        .map_err(|e| build(seccompiler::Error::Backend(e)))
}

/// Compile the filters for `mode` and, in kill mode, install the SIGSYS handler that records
/// the forbidden call in `exit_file` (reserved now if it is not yet). Call once, before any
/// thread kind [`enter`]s its filter.
pub fn prepare(mode: SeccompMode, exit_file: Option<&Path>) -> Result<(), SeccompError> {
    let filters = match mode {
        SeccompMode::Off => None,
        _ => Some(Filters {
            vcpu: compile(ThreadKind::Vcpu, mode)?,
            event_loop: compile(ThreadKind::EventLoop, mode)?,
            audit_writer: compile(ThreadKind::AuditWriter, mode)?,
            keeper: compile(ThreadKind::Keeper, mode)?,
        }),
    };
    if mode == SeccompMode::Kill {
        sigsys::install(exit_file)?;
    }
    let _ = FILTERS.set(filters);
    Ok(())
}

/// The exit file's descriptor the SIGSYS handler writes to, if any (to keep it open).
pub fn exit_fd() -> Option<std::os::fd::RawFd> {
    sigsys::exit_fd()
}

/// Make the SIGSYS handler forget the exit file (in a process that closed it: the keeper).
pub fn forget_exit_file() {
    sigsys::forget_exit_file();
}

/// Install `kind`'s filter on the calling thread (nothing if none were prepared). Sets
/// no_new_privs first, which seccomp(2) requires of an unprivileged caller.
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(Some(filters)) = FILTERS.get() else {
        return Ok(());
    };
    let program = match kind {
        ThreadKind::Vcpu => &filters.vcpu,
        ThreadKind::EventLoop => &filters.event_loop,
        ThreadKind::AuditWriter => &filters.audit_writer,
        ThreadKind::Keeper => &filters.keeper,
    };
    // SAFETY: prctl(2) PR_SET_NO_NEW_PRIVS takes its flag by value.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SeccompError::Setup {
            what: "PR_SET_NO_NEW_PRIVS".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { kind, source })
}

/// The audit writer thread's first acts: a descriptor table of its own
/// ([`crate::fd_table`]), then its filter. A thread that cannot be filtered ends the VMM
/// rather than run unfiltered.
pub fn enter_audit_writer() {
    crate::fd_table::unshare();
    if let Err(e) = enter(ThreadKind::AuditWriter) {
        log::error!("{e}");
        // SAFETY: _exit(2) ends the process at once.
        unsafe { libc::_exit(crate::exit::EXIT_SECCOMP) };
    }
}
