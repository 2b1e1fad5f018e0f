//! The jail a VMM runs in (`slicevisor run --jail UID:GID`): new mount, IPC and PID
//! namespaces, a minimal root file system holding only the files this VM uses, its own
//! unprivileged uid and gid, no capabilities, no_new_privs, and rlimits.
//!
//! Entered first thing, while the process is still single-threaded and root:
//! 1. the files that need privilege are opened ([`Preopened`]: /dev/kvm, TAPs not passed in,
//!    the shaper ledger);
//! 2. `unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET)` and a fork: the
//!    parent stays as the keeper ([`keeper`]: waits, forwards stop signals, exits as the VMM
//!    did); the child is PID 1 of the new PID namespace, in an empty network namespace (its
//!    TAPs and their sockets were opened before, in the host's), closes every inherited
//!    descriptor it does not use, and goes on to be the VMM;
//! 3. the child builds the root ([`root_fs`]) and `pivot_root`s into it;
//! 4. it drops to the jail's uid/gid ([`privileges`]).
//!
//! Modelled on Firecracker's jailer (`src/jailer/`), which does the same in a separate binary
//! before exec'ing the VMM; here the VMM jails itself, so that the node daemon and a user at a
//! shell start a jailed VMM the same way.

mod keeper;
mod privileges;
mod root_fs;

use std::fs::File;
use std::os::fd::{OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub use root_fs::Bind;

/// Where every jail's root is mounted (a tmpfs, in the VMM's own mount namespace, so that
/// the jails of all VMMs share this one empty directory of the host).
pub const JAIL_MOUNT_POINT: &str = "/run/slicevisor-jail";

/// Largest number of open files a jailed VMM may have (RLIMIT_NOFILE).
pub const MAX_OPEN_FILES: u64 = 4096;
/// Threads and processes the jail's uid may have beyond one per vCPU (RLIMIT_NPROC: the
/// event loop, the audit writer, the keeper, and room for the runtime's helpers).
pub const SPARE_TASKS: u64 = 16;

/// Who the jailed VMM runs as, and what it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailSpec {
    /// The VMM's uid (not 0).
    pub uid: u32,
    /// The VMM's gid (not 0); its only group.
    pub gid: u32,
    /// Files and directories visible in the jail, at the same absolute paths as outside.
    pub binds: Vec<Bind>,
    /// Threads the VMM will run (its vCPUs), for RLIMIT_NPROC.
    pub vcpus: u8,
}

impl std::str::FromStr for JailSpec {
    type Err = String;

    /// `UID:GID`, both non-zero; the binds come from the VM's configuration.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (uid, gid) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected UID:GID"))?;
        let id = |v: &str, what: &str| match v.parse::<u32>() {
            Ok(0) => Err(format!(
                "{what} 0 is root: a jail needs an unprivileged {what}"
            )),
            Ok(u32::MAX) => Err(format!("{what} {v} is the invalid id (-1)")),
            Ok(n) => Ok(n),
            Err(e) => Err(format!("{what} {v:?}: {e}")),
        };
        Ok(Self {
            uid: id(uid, "uid")?,
            gid: id(gid, "gid")?,
            binds: Vec::new(),
            vcpus: 1,
        })
    }
}

/// What was opened with privilege before the jail, for the VMM to use inside it.
#[derive(Debug, Default)]
pub struct Preopened {
    /// /dev/kvm.
    pub kvm: Option<OwnedFd>,
    /// The shaper ledger, opened read-write.
    pub ledger: Option<File>,
    /// Per `--net`, in order: the TAP, when it was passed in (`fd=`) or opened before the jail.
    pub taps: Vec<Option<devices::virtio::net::tap::Tap>>,
    /// KVM's supported CPUID table, read from `--supported-cpuid` (the VMM asks KVM when
    /// there is none).
    pub supported_cpuid: Option<kvm_bindings::CpuId>,
}

/// Errors entering the jail; each names the step and the path or id.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// A system call of the set-up failed.
    #[error("jail: {what}: {source}")]
    Sys {
        /// The step, with its path or id.
        what: String,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The jail needs root to set up (namespaces, mounts, ids).
    #[error("jail: --jail needs root (the VMM sets up namespaces and mounts, then drops to the jail's uid)")]
    NotRoot,
    /// A path to show in the jail is relative or cannot be resolved.
    #[error("jail: {path}: {why}")]
    Path {
        /// The path.
        path: PathBuf,
        /// Why it cannot be shown.
        why: String,
    },
}

/// The error of the last system call, for step `what`.
fn sys(what: impl Into<String>) -> JailError {
    JailError::Sys {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// Enter the jail `spec` describes, keeping open only stdio and `keep` (what was opened
/// before: /dev/kvm, TAPs, the ledger, the exit file). Returns in the VMM (the child); the
/// keeper never returns from here (it exits as the VMM does). Must be called while the
/// process has one thread.
pub fn enter(spec: &JailSpec, keep: &[RawFd]) -> Result<(), JailError> {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(JailError::NotRoot);
    }
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWPID | libc::CLONE_NEWNET;
    // SAFETY: unshare(2) with namespace flags only; no memory is passed.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(sys(
            "unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET)",
        ));
    }
    let lifeline = keeper::fork_keeper(spec)?;
    // The child: PID 1 of the new PID namespace.
    let mut kept = keep.to_vec();
    kept.push(lifeline.fd());
    close_other_fds(&kept)?;
    root_fs::pivot_into(&spec.binds)?;
    privileges::drop_to(spec)?;
    lifeline.hold();
    Ok(())
}

/// Close every descriptor above stdio that is not in `keep` (inherited ones a careless
/// parent left open must not reach the jail).
fn close_other_fds(keep: &[RawFd]) -> Result<(), JailError> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|source| JailError::Sys {
            what: "listing /proc/self/fd".into(),
            source,
        })?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    for fd in open {
        if fd > 2 && !keep.contains(&fd) {
            // SAFETY: closing a descriptor nothing in this process uses any more: the only
            // owned ones are in `keep`, and the directory listing's own fd is closed by now
            // (closing it again is an EBADF, nothing worse).
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}

/// `path` made absolute (against the current directory) with symlinks resolved, so that it
/// names the same file inside the jail; a path that does not exist yet has its directory
/// resolved.
pub fn resolve(path: &Path) -> Result<PathBuf, JailError> {
    let err = |why: String| JailError::Path {
        path: path.to_owned(),
        why,
    };
    if let Ok(p) = std::fs::canonicalize(path) {
        return Ok(p);
    }
    let name = path
        .file_name()
        .ok_or_else(|| err("has no file name".into()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let dir = std::fs::canonicalize(dir).map_err(|e| err(format!("its directory: {e}")))?;
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_non_root_ids() {
        let s: JailSpec = "1000:1001".parse().expect("parse");
        assert_eq!((s.uid, s.gid), (1000, 1001));
        for bad in ["0:5", "5:0", "5", "a:b", "4294967295:1", ":"] {
            assert!(bad.parse::<JailSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_makes_paths_absolute() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let real = std::fs::canonicalize(dir.path()).expect("canonicalize");
        assert_eq!(resolve(&file).expect("existing"), real.join("f"));
        assert_eq!(
            resolve(&dir.path().join("new")).expect("new"),
            real.join("new")
        );
        assert!(resolve(&dir.path().join("missing/new")).is_err());
    }
}
