//! The jail's root: a small tmpfs holding only bind mounts of the files this VM uses, at the
//! same absolute paths as outside, plus /dev/null, /dev/zero, /dev/urandom and a /proc of the
//! VMM's own PID namespace; made the root with pivot_root(2) (the old root is detached, so
//! nothing else of the host is reachable) and remounted read-only.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{sys, JailError, JAIL_MOUNT_POINT};

/// A file or directory of the host shown in the jail at the same path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// Absolute, resolved path.
    pub path: PathBuf,
    /// Whether the VMM may write to it (else a read-only bind).
    pub writable: bool,
}

impl Bind {
    /// A read-only bind of `path`.
    pub fn ro(path: PathBuf) -> Self {
        Self {
            path,
            writable: false,
        }
    }

    /// A read-write bind of `path`.
    pub fn rw(path: PathBuf) -> Self {
        Self {
            path,
            writable: true,
        }
    }
}

/// Device nodes every VMM gets (read-write: writing /dev/null must work).
const DEVICES: [&str; 3] = ["/dev/null", "/dev/zero", "/dev/urandom"];

fn c_path(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| JailError::Path {
        path: path.to_owned(),
        why: "contains a NUL byte".into(),
    })
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let source_c = source.map(c_path).transpose()?;
    let target_c = c_path(target)?;
    let fstype_c = fstype.map(|f| CString::new(f).unwrap_or_default());
    let data_c = data.map(|d| CString::new(d).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: mount(2) reads NUL-terminated strings that live until it returns; null pointers
    // are allowed for the unused arguments.
    let rc = unsafe {
        libc::mount(
            ptr(&source_c),
            target_c.as_ptr(),
            ptr(&fstype_c),
            flags,
            ptr(&data_c).cast(),
        )
    };
    if rc != 0 {
        return Err(sys(format!(
            "mount {} on {} (flags {flags:#x})",
            source.map_or("-".into(), |s| s.display().to_string()),
            target.display()
        )));
    }
    Ok(())
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Sys { what, source }
}

/// Make `path` (under the new root) a mount point of the same kind as `source`, unless it is
/// there already (under a bind of a directory that holds it: then it *is* the host's file,
/// which must not be touched).
fn make_target(source: &Path, target: &Path) -> Result<(), JailError> {
    if std::fs::symlink_metadata(target).is_ok() {
        return Ok(());
    }
    let meta = std::fs::metadata(source).map_err(io(format!("{}", source.display())))?;
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    if meta.is_dir() {
        std::fs::create_dir(target)
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(target)
            .map(drop)
    }
    .map_err(io(format!("creating {}", target.display())))
}

/// Build the root from `binds` and pivot into it.
pub(super) fn pivot_into(binds: &[Bind]) -> Result<(), JailError> {
    let root = Path::new(JAIL_MOUNT_POINT);
    // Nothing mounted from here on propagates back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=755,size=1m"),
    )?;
    let mut all: Vec<Bind> = DEVICES.iter().map(|d| Bind::rw(PathBuf::from(d))).collect();
    all.extend(binds.iter().cloned());
    // Parents before children; one bind per path, read-write if any asks for it.
    all.sort_by(|a, b| a.path.cmp(&b.path).then(b.writable.cmp(&a.writable)));
    all.dedup_by(|later, kept| later.path == kept.path);
    for bind in &all {
        if !bind.path.is_absolute() {
            return Err(JailError::Path {
                path: bind.path.clone(),
                why: "not absolute".into(),
            });
        }
        let target = root.join(bind.path.strip_prefix("/").unwrap_or(&bind.path));
        make_target(&bind.path, &target)?;
        mount(
            Some(&bind.path),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        // Nothing in a jail is set-id or executable; only the device nodes are devices.
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NOEXEC;
        if !DEVICES.iter().any(|d| bind.path == Path::new(d)) {
            flags |= libc::MS_NODEV;
        }
        if !bind.writable {
            flags |= libc::MS_RDONLY;
        }
        mount(None, &target, None, flags, None)?;
    }
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(io("creating /proc".into()))?;
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    let old = root.join(".old");
    std::fs::create_dir_all(&old).map_err(io("creating the old root's mount point".into()))?;
    let (root_c, old_c) = (c_path(root)?, c_path(&old)?);
    // SAFETY: pivot_root(2) reads two NUL-terminated paths that outlive the call.
    if unsafe { libc::syscall(libc::SYS_pivot_root, root_c.as_ptr(), old_c.as_ptr()) } != 0 {
        return Err(sys(format!("pivot_root({})", root.display())));
    }
    std::env::set_current_dir("/").map_err(io("chdir /".into()))?;
    let old_c = c_path(Path::new("/.old"))?;
    // SAFETY: umount2(2) reads a NUL-terminated path; MNT_DETACH takes the host's tree away
    // from this namespace even while something in it is busy.
    if unsafe { libc::umount2(old_c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(sys("detaching the old root"));
    }
    std::fs::remove_dir("/.old").map_err(io("removing /.old".into()))?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
}
