//! Exclusive `flock`s: one writer per sliver log directory and per capture ring.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::error::{AuditError, Result};

/// Take an exclusive, non-blocking `flock` on `file` (at `path`); held until it is closed.
/// `Locked` names `owner`, the directory or file being protected.
pub fn lock_exclusive(file: &File, path: &Path, owner: &Path) -> Result<()> {
    // SAFETY: flock on a descriptor the caller owns for the call; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        AuditError::Locked {
            dir: owner.to_path_buf(),
        }
    } else {
        AuditError::io(path, e)
    })
}
