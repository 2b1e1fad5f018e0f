//! Slivers' disks in `STATE/disks`: `<name>.ext4`, the root disk, a copy-on-write copy of its
//! `vref` image grown to `disk_max`; and `<name>.cidata.img`, the cloud-init NoCloud config
//! disk (FAT, label `cidata`), written anew at every start.
//!
//! The copy is a reflink (`FICLONE`) where the file system shares extents (XFS, btrfs): N
//! slivers of one image then cost about N × their own writes. Elsewhere (ext4, tmpfs) it is a
//! sparse copy of the image's data, and each sliver costs its image's used blocks as well; the
//! daemon logs which it did. The copy is then made `disk_max` bytes long and its file system
//! grown to fill it (`e2fsck -f -p`, `resize2fs`, on the host at native speed), so the guest
//! sees "no space left on device" from its own file system when it has used its quota, and
//! the host file never grows past `disk_max` (plus nothing: its size is fixed). Both steps
//! work on a temporary file renamed into place, so a crash leaves no half-made disk.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use guest_init::nocloud::{self, Config};

use crate::error::SliverError;
use crate::state::{io_err, StateError};

/// `FICLONE` of `<linux/fs.h>`: `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;
const TMP_PREFIX: &str = ".new-";
/// Size of the config disk: 1 MiB, plenty for three small files.
const CIDATA_KIB: &str = "1024";

/// How a root disk was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyKind {
    /// Extents shared with the image (copy-on-write).
    Reflink,
    /// The image's data copied (holes kept).
    SparseCopy,
}

/// The disks directory of a state directory.
#[derive(Debug)]
pub struct SliverDisks {
    dir: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<(), SliverError> {
    let out = cmd.output().map_err(|e| {
        SliverError::Internal(format!(
            "{what}: cannot run it ({e}); scripts/setup.sh installs it"
        ))
    })?;
    // e2fsck exits 1 when it corrected something: that is success.
    let ok = out.status.success() || (what.starts_with("e2fsck") && out.status.code() == Some(1));
    if !ok {
        return Err(SliverError::Internal(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl SliverDisks {
    /// The disks of `state_dir`, as paths only (nothing is made or read).
    pub fn at(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("disks"),
        }
    }

    /// The disks of `state_dir` (the directory is made if missing; temporary files of disks
    /// being made when the daemon stopped are removed).
    ///
    /// # Errors
    /// The directory cannot be made or read.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("disks");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    /// Sliver `name`'s root disk.
    pub fn root_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.ext4"))
    }

    /// Sliver `name`'s config disk.
    pub fn cidata_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.cidata.img"))
    }

    /// The slivers that have disks here.
    pub fn names(&self) -> Vec<String> {
        std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                f.strip_suffix(".ext4")
                    .or_else(|| f.strip_suffix(".cidata.img"))
                    .map(str::to_string)
            })
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// Host bytes sliver `name`'s root disk takes (allocated blocks), if it has one.
    pub fn used_bytes(&self, name: &str) -> Option<u64> {
        std::fs::metadata(self.root_path(name))
            .ok()
            .map(|m| m.blocks() * 512)
    }

    /// Make sliver `name`'s root disk from `image` if it has none: a copy-on-write copy
    /// where the file system allows, `size` bytes, its file system grown to fill it.
    /// Returns how it was copied (`None`: it existed).
    ///
    /// # Errors
    /// The copy or the resize failed (nothing is left behind).
    pub fn ensure_root(
        &self,
        name: &str,
        image: &Path,
        size: u64,
    ) -> Result<Option<CopyKind>, SliverError> {
        let target = self.root_path(name);
        if target.exists() {
            return Ok(None);
        }
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}.ext4"));
        let made = (|| {
            let kind = clone_or_copy(image, &tmp)?;
            let file = File::options()
                .write(true)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            file.set_len(size).map_err(io_err(&tmp))?;
            drop(file);
            let path = tmp.as_os_str();
            run(
                Command::new("e2fsck").args(["-f", "-p"]).arg(path),
                "e2fsck -f -p",
            )?;
            run(Command::new("resize2fs").arg(path), "resize2fs")?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
            Ok::<_, SliverError>(kind)
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        let kind = made?;
        log::info!(
            "sliver {name}: root disk {} ({} MiB) made from {} by {}",
            target.display(),
            size >> 20,
            image.display(),
            match kind {
                CopyKind::Reflink => "reflink (copy-on-write)",
                CopyKind::SparseCopy =>
                    "a sparse copy (this file system has no reflinks: each sliver costs the image's data too)",
            }
        );
        Ok(Some(kind))
    }

    /// Write sliver `name`'s config disk with `config` (replacing the last one).
    ///
    /// # Errors
    /// `mkfs.vfat` or `mcopy` failed or are missing, or a file could not be written.
    pub fn write_cidata(&self, name: &str, config: &Config) -> Result<(), SliverError> {
        let target = self.cidata_path(name);
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}.cidata.img"));
        let files = tempfile::tempdir_in(&self.dir).map_err(io_err(&self.dir))?;
        let made = (|| {
            let _ = std::fs::remove_file(&tmp);
            run(
                Command::new("mkfs.vfat")
                    .args(["-n", &nocloud::LABEL.to_uppercase(), "-C"])
                    .arg(&tmp)
                    .arg(CIDATA_KIB),
                "mkfs.vfat",
            )?;
            let mut mcopy = Command::new("mcopy");
            mcopy.arg("-i").arg(&tmp);
            for (file, text) in config.files() {
                let path = files.path().join(file);
                std::fs::write(&path, text).map_err(io_err(&path))?;
                mcopy.arg(&path);
            }
            run(mcopy.arg("::"), "mcopy")?;
            std::fs::rename(&tmp, &target).map_err(io_err(&target))?;
            Ok(())
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        made
    }

    /// Remove sliver `name`'s disks (absent is fine).
    pub fn remove(&self, name: &str) {
        for path in [self.root_path(name), self.cidata_path(name)] {
            match std::fs::remove_file(&path) {
                Ok(()) => log::info!("sliver {name}: {} removed", path.display()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => log::error!("sliver {name}: removing {}: {e}", path.display()),
            }
        }
    }
}

/// Make `to` a reflink of `from`, else a sparse copy of it.
fn clone_or_copy(from: &Path, to: &Path) -> Result<CopyKind, SliverError> {
    let src = File::open(from).map_err(io_err(from))?;
    let dst = File::options()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_err(to))?;
    // SAFETY: FICLONE takes the source descriptor by value; both fds are ours.
    if unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) } == 0 {
        return Ok(CopyKind::Reflink);
    }
    sparse_copy(&src, &dst).map_err(io_err(to))?;
    Ok(CopyKind::SparseCopy)
}

/// Copy the data of `src` into `dst` (holes stay holes), with `copy_file_range(2)`.
fn sparse_copy(src: &File, dst: &File) -> io::Result<()> {
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut at: libc::off_t = 0;
    let end = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    while at < end {
        // SAFETY: lseek on our own descriptor.
        let data = unsafe { libc::lseek(sfd, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(sfd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (mut off_in, mut off_out) = (data, data);
        while off_in < hole {
            let want = usize::try_from(hole - off_in)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            // SAFETY: copy_file_range between our descriptors with offsets we own.
            let n = unsafe { libc::copy_file_range(sfd, &mut off_in, dfd, &mut off_out, want, 0) };
            if n <= 0 {
                return Err(if n == 0 {
                    io::Error::from(io::ErrorKind::UnexpectedEof)
                } else {
                    io::Error::last_os_error()
                });
            }
        }
        at = hole;
    }
    dst.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_copy_keeps_data_and_holes() {
        let dir = tempfile::tempdir().expect("tmp");
        let from = dir.path().join("from");
        let to = dir.path().join("to");
        let f = File::create(&from).expect("create");
        f.set_len(8 << 20).expect("len");
        std::os::unix::fs::FileExt::write_all_at(&f, &[7u8; 4096], 4 << 20).expect("data");
        f.sync_all().expect("sync");
        let kind = clone_or_copy(&from, &to).expect("copy");
        let back = std::fs::read(&to).expect("read");
        assert_eq!(back.len(), 8 << 20);
        assert!(back[4 << 20..(4 << 20) + 4096].iter().all(|&b| b == 7));
        assert!(back[..4 << 20].iter().all(|&b| b == 0));
        if kind == CopyKind::SparseCopy {
            let used = std::fs::metadata(&to).expect("meta").blocks() * 512;
            assert!(used < 1 << 20, "holes stay holes: {used} bytes allocated");
        }
    }
}
