//! The host side of a virtio-blk device: a regular file (or block device) of whole sectors,
//! locked against a second writer, with vectored I/O straight into guest memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{ID_BYTES, SECTOR_SIZE};

/// Why a disk could not be opened; each names the `--disk` path.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Opening or inspecting the file failed (missing, unreadable, read-only file for a
    /// writable disk).
    #[error("--disk path={path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A directory, socket or other file that is not a disk.
    #[error("--disk path={0}: not a regular file or block device")]
    NotAFile(PathBuf),
    /// Empty, or not a whole number of 512-byte sectors.
    #[error(
        "--disk path={path}: {size} bytes is not a whole, non-zero number of 512-byte sectors"
    )]
    BadSize {
        /// The path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Another process holds the disk (a lock conflicts).
    #[error("--disk path={0}: in use by another process (locked)")]
    Locked(PathBuf),
    /// The serial is longer than virtio-blk's 20 bytes, or not printable ASCII.
    #[error("--disk id={0:?}: at most 20 printable ASCII characters")]
    BadId(String),
}

/// An open disk.
#[derive(Debug)]
pub struct Disk {
    file: File,
    path: PathBuf,
    sectors: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
}

impl Disk {
    /// Open `path` as a disk, read-only if `read_only`, with serial `id` (GET_ID; default:
    /// the file name, cut to 20 bytes). A writable disk is locked exclusively, a read-only
    /// one shared, so two VMMs never write one file.
    ///
    /// # Errors
    /// See [`DiskError`]; every error names the path.
    pub fn open(path: &Path, read_only: bool, id: Option<&str>) -> Result<Self, DiskError> {
        let err = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let id = serial(path, id)?;
        let meta = std::fs::metadata(path).map_err(err)?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(DiskError::NotAFile(path.to_path_buf()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(err)?;
        let lock = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on a descriptor we own; it takes no pointers.
        if unsafe { libc::flock(file.as_raw_fd(), lock | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.kind() == io::ErrorKind::WouldBlock {
                DiskError::Locked(path.to_path_buf())
            } else {
                err(e)
            });
        }
        let size = if kind.is_block_device() {
            let mut f = &file;
            io::Seek::seek(&mut f, io::SeekFrom::End(0)).map_err(err)?
        } else {
            meta.len()
        };
        if size == 0 || size % SECTOR_SIZE != 0 {
            return Err(DiskError::BadSize {
                path: path.to_path_buf(),
                size,
            });
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            sectors: size / SECTOR_SIZE,
            read_only,
            id,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The GET_ID serial, NUL-padded.
    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read into `iovs` from byte `offset`, all of it.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for writes for the whole call.
    pub unsafe fn read_at(&self, iovs: &[libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: passed on from the caller.
        unsafe { self.vectored(iovs, offset, false) }
    }

    /// Write `iovs` at byte `offset`, all of it.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for reads for the whole call.
    pub unsafe fn write_at(&self, iovs: &[libc::iovec], offset: u64) -> io::Result<()> {
        // SAFETY: passed on from the caller.
        unsafe { self.vectored(iovs, offset, true) }
    }

    /// `preadv`/`pwritev` until every byte moved (the kernel may do less than asked).
    ///
    /// # Safety
    /// The iovecs describe memory valid for the access for the whole call.
    unsafe fn vectored(&self, iovs: &[libc::iovec], offset: u64, write: bool) -> io::Result<()> {
        let mut offset = offset;
        // The first iovec not done yet, and how many of its bytes are.
        let (mut idx, mut skip) = (0usize, 0usize);
        while idx < iovs.len() {
            if skip == 0 && iovs[idx].iov_len == 0 {
                idx += 1;
                continue;
            }
            let partial;
            let (ptr, count) = if skip == 0 {
                let rest = &iovs[idx..];
                (rest.as_ptr(), rest.len().min(1024))
            } else {
                let cur = iovs[idx];
                partial = libc::iovec {
                    // SAFETY: `skip` < the iovec's length: still inside its memory.
                    iov_base: unsafe { cur.iov_base.cast::<u8>().add(skip) }.cast(),
                    iov_len: cur.iov_len - skip,
                };
                (&raw const partial, 1)
            };
            let off = libc::off_t::try_from(offset)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let count = libc::c_int::try_from(count).unwrap_or(1);
            // SAFETY: `ptr` points at `count` iovecs the caller vouches for (or at our copy of
            // one, advanced past what was done).
            let r = unsafe {
                if write {
                    libc::pwritev(self.file.as_raw_fd(), ptr, count, off)
                } else {
                    libc::preadv(self.file.as_raw_fd(), ptr, count, off)
                }
            };
            let n = match usize::try_from(r) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(n) => n,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(e);
                }
            };
            offset += n as u64;
            let mut left = n + skip;
            while idx < iovs.len() && left >= iovs[idx].iov_len {
                left -= iovs[idx].iov_len;
                idx += 1;
            }
            skip = left;
        }
        Ok(())
    }

    /// Make every completed write durable (`fdatasync`): VIRTIO_BLK_T_FLUSH.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Give bytes `offset..offset + len` back to the host: they read as zeros and take no
    /// space (`fallocate` PUNCH_HOLE, keeping the size).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Make bytes `offset..offset + len` read as zeros: a hole if `unmap`, else allocated
    /// zeros (`fallocate` ZERO_RANGE), falling back to a hole where the file system has no
    /// ZERO_RANGE.
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if !unmap {
            match self.fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset,
                len,
            ) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
                other => return other,
            }
        }
        self.discard(offset, len)
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let bad = || io::Error::from_raw_os_error(libc::EINVAL);
        let offset = libc::off_t::try_from(offset).map_err(|_| bad())?;
        let len = libc::off_t::try_from(len).map_err(|_| bad())?;
        // SAFETY: fallocate on a descriptor we own; it takes no pointers.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The GET_ID serial: `id`, or the file name, cut to 20 bytes, NUL-padded.
fn serial(path: &Path, id: Option<&str>) -> Result<[u8; ID_BYTES], DiskError> {
    let mut out = [0u8; ID_BYTES];
    let text = match id {
        Some(id) => {
            if id.len() > ID_BYTES || !id.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(DiskError::BadId(id.to_string()));
            }
            id.to_string()
        }
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .filter(char::is_ascii_graphic)
            .take(ID_BYTES)
            .collect(),
    };
    out[..text.len()].copy_from_slice(text.as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(len: u64) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("tmp");
        f.as_file().set_len(len).expect("len");
        f
    }

    #[test]
    fn bad_disks_are_refused_naming_the_path() {
        let dir = tempfile::tempdir().expect("tmp");
        let e = Disk::open(dir.path(), false, None).expect_err("dir");
        assert!(matches!(e, DiskError::NotAFile(_)), "{e}");
        assert!(e.to_string().starts_with("--disk path="), "{e}");
        for len in [0, 513] {
            let f = file_of(len);
            let e = Disk::open(f.path(), false, None).expect_err("size");
            assert!(matches!(e, DiskError::BadSize { .. }), "{e}");
        }
        let e = Disk::open(Path::new("/nonexistent/disk.img"), false, None).expect_err("none");
        assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
        let f = file_of(4096);
        let e = Disk::open(f.path(), false, Some("a serial that is far too long"));
        assert!(matches!(e, Err(DiskError::BadId(_))));
    }

    #[test]
    fn a_writable_disk_is_locked_against_a_second_opener() {
        let f = file_of(4096);
        let d = Disk::open(f.path(), false, Some("one")).expect("first");
        assert_eq!(d.sectors(), 8);
        assert_eq!(&d.id()[..4], b"one\0");
        let e = Disk::open(f.path(), false, None).expect_err("second writer");
        assert!(matches!(e, DiskError::Locked(_)), "{e}");
        assert!(matches!(
            Disk::open(f.path(), true, None),
            Err(DiskError::Locked(_))
        ));
        drop(d);
        let r1 = Disk::open(f.path(), true, None).expect("reader");
        let _r2 = Disk::open(f.path(), true, None).expect("second reader");
        assert!(r1.read_only());
    }

    #[test]
    fn vectored_io_moves_every_byte_across_iovecs() {
        let f = file_of(1 << 20);
        let d = Disk::open(f.path(), false, None).expect("open");
        let mut a = vec![1u8; 1000];
        let mut b = vec![2u8; 3096];
        let iovs = [
            libc::iovec {
                iov_base: a.as_mut_ptr().cast(),
                iov_len: a.len(),
            },
            libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            },
        ];
        // SAFETY: the iovecs describe `a` and `b`, alive for the call.
        unsafe { d.write_at(&iovs, 8192) }.expect("write");
        let mut back = vec![0u8; 4096];
        let one = [libc::iovec {
            iov_base: back.as_mut_ptr().cast(),
            iov_len: back.len(),
        }];
        // SAFETY: describes `back`.
        unsafe { d.read_at(&one, 8192) }.expect("read");
        assert!(back[..1000].iter().all(|&x| x == 1));
        assert!(back[1000..].iter().all(|&x| x == 2));
        d.discard(8192, 4096).expect("discard");
        // SAFETY: describes `back`.
        unsafe { d.read_at(&one, 8192) }.expect("read");
        assert!(
            back.iter().all(|&x| x == 0),
            "a discarded range reads as zeros"
        );
        d.flush().expect("flush");
        // Past the end: an error, not a short read reported as success.
        // SAFETY: describes `back`.
        assert!(unsafe { d.read_at(&one, (1 << 20) - 100) }.is_err());
    }
}
