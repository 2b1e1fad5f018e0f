//! Loading the kernel (ELF `vmlinux` with a PVH entry) and the initrd into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::{Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::HIMEM_START;

const PAGE_SIZE: u64 = 4096;
const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
const PT_LOAD: u32 = 1;

/// Errors loading the kernel or initrd; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// Cannot open or read a file.
    #[error("--{what} {path}: {source}")]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A bzImage was given.
    #[error("--kernel {0}: this is a bzImage; slicevisor boots the ELF vmlinux through its PVH entry (build with CONFIG_PVH=y)")]
    BzImage(PathBuf),
    /// Not an ELF file at all.
    #[error("--kernel {0}: not an ELF vmlinux (bad magic)")]
    NotElf(PathBuf),
    /// The ELF loader refused it.
    #[error("--kernel {path}: corrupt or unsupported ELF: {source}")]
    Elf {
        /// The file.
        path: PathBuf,
        /// linux-loader's reason.
        source: linux_loader::loader::Error,
    },
    /// No PVH note.
    #[error("--kernel {0}: no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build the kernel with CONFIG_PVH=y")]
    NoPvhEntry(PathBuf),
    /// Kernel segments reach past RAM.
    #[error("--kernel {path}: needs guest memory up to {end:#x}, but RAM below 3 GiB ends at {ram_end:#x}; raise --mem-mib")]
    KernelTooBig {
        /// The file.
        path: PathBuf,
        /// Highest byte the kernel needs.
        end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// The initrd does not fit between the kernel and the end of low RAM.
    #[error("--initrd {path}: {size} bytes do not fit in guest memory between the kernel (ends {kernel_end:#x}) and {ram_end:#x}; raise --mem-mib")]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// End of the kernel.
        kernel_end: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// Writing into guest memory failed.
    #[error("--initrd {0}: copying into guest memory: {1}")]
    InitrdCopy(PathBuf, vm_memory::GuestMemoryError),
}

/// Where the kernel landed.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The PVH 32-bit entry point.
    pub entry: GuestAddress,
    /// First byte after the kernel's highest segment.
    pub end: u64,
}

/// Where the initrd landed.
#[derive(Debug, Clone, Copy)]
pub struct LoadedInitrd {
    /// Guest address.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

fn open(what: &'static str, path: &Path) -> Result<File, LoaderError> {
    let read_err = |source| LoaderError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(read_err)?;
    if file.metadata().map_err(read_err)?.is_dir() {
        return Err(read_err(std::io::Error::other("is a directory")));
    }
    Ok(file)
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Highest physical address any PT_LOAD segment needs, if the headers can be read.
fn elf_load_end(file: &mut File) -> Option<u64> {
    let mut ehdr = [0u8; 64];
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_exact(&mut ehdr).ok()?;
    let phoff = u64_at(&ehdr, 0x20)?;
    let phentsize = u64::from(u16_at(&ehdr, 0x36)?);
    let phnum = u64::from(u16_at(&ehdr, 0x38)?);
    if phentsize < 56 {
        return None;
    }
    let mut phdrs = vec![0u8; usize::try_from(phentsize.checked_mul(phnum)?).ok()?];
    file.seek(SeekFrom::Start(phoff)).ok()?;
    file.read_exact(&mut phdrs).ok()?;
    phdrs
        .chunks_exact(phentsize as usize)
        .filter(|p| u32_at(p, 0) == Some(PT_LOAD))
        .filter_map(|p| u64_at(p, 0x18)?.checked_add(u64_at(p, 0x28)?))
        .max()
}

/// Load an ELF vmlinux at its physical addresses; it must fit below `ram_end` and have a PVH
/// entry.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    ram_end: u64,
) -> Result<LoadedKernel, LoaderError> {
    let mut file = open("kernel", path)?;
    let mut head = [0u8; 0x210];
    let n = file.read(&mut head).map_err(|source| LoaderError::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    })?;
    let head = &head[..n];
    if head.get(BZIMAGE_MAGIC_OFFSET..BZIMAGE_MAGIC_OFFSET + 4) == Some(BZIMAGE_MAGIC) {
        return Err(LoaderError::BzImage(path.to_path_buf()));
    }
    if !head.starts_with(ELF_MAGIC) {
        return Err(LoaderError::NotElf(path.to_path_buf()));
    }
    if let Some(end) = elf_load_end(&mut file) {
        if end > ram_end {
            return Err(LoaderError::KernelTooBig {
                path: path.to_path_buf(),
                end,
                ram_end,
            });
        }
    }
    let result =
        Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            LoaderError::Elf {
                path: path.to_path_buf(),
                source,
            }
        })?;
    match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
            entry,
            end: result.kernel_end,
        }),
        _ => Err(LoaderError::NoPvhEntry(path.to_path_buf())),
    }
}

/// Load the initrd page-aligned at the top of low RAM, above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    ram_end: u64,
) -> Result<LoadedInitrd, LoaderError> {
    let mut file = open("initrd", path)?;
    let size = file
        .metadata()
        .map_err(|source| LoaderError::Read {
            what: "initrd",
            path: path.to_path_buf(),
            source,
        })?
        .len();
    let too_big = || LoaderError::InitrdTooBig {
        path: path.to_path_buf(),
        size,
        kernel_end,
        ram_end,
    };
    let addr = ram_end.checked_sub(size).ok_or_else(too_big)? & !(PAGE_SIZE - 1);
    if addr < kernel_end {
        return Err(too_big());
    }
    let len = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| LoaderError::InitrdCopy(path.to_path_buf(), e))?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn mem(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mib << 20)]).expect("memory")
    }

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("tmp");
        f.write_all(bytes).expect("write");
        f
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let e =
            load_kernel(&mem(4), Path::new("/nonexistent/vmlinux"), 4 << 20).expect_err("missing");
        let msg = e.to_string();
        assert!(msg.starts_with("--kernel /nonexistent/vmlinux:"), "{msg}");
    }

    #[test]
    fn garbage_is_not_elf() {
        let f = file_with(b"this is not a kernel");
        let e = load_kernel(&mem(4), f.path(), 4 << 20).expect_err("garbage");
        assert!(matches!(e, LoaderError::NotElf(_)), "{e}");
    }

    #[test]
    fn empty_file_is_not_elf() {
        let f = file_with(b"");
        assert!(matches!(
            load_kernel(&mem(4), f.path(), 4 << 20),
            Err(LoaderError::NotElf(_))
        ));
    }

    #[test]
    fn bzimage_is_recognised() {
        let mut image = vec![0u8; 0x300];
        image[0x202..0x206].copy_from_slice(BZIMAGE_MAGIC);
        let f = file_with(&image);
        assert!(matches!(
            load_kernel(&mem(4), f.path(), 4 << 20),
            Err(LoaderError::BzImage(_))
        ));
    }

    #[test]
    fn truncated_elf_is_reported_not_panicked() {
        let mut image = b"\x7fELF\x02\x01\x01".to_vec();
        image.resize(40, 0);
        let f = file_with(&image);
        let e = load_kernel(&mem(4), f.path(), 4 << 20).expect_err("truncated");
        assert!(matches!(e, LoaderError::Elf { .. }), "{e}");
    }

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        let f = file_with(&[7u8; 5000]);
        let m = mem(4);
        let r = load_initrd(&m, f.path(), 2 << 20, 4 << 20).expect("fits");
        assert_eq!(r.size, 5000);
        assert_eq!(r.addr.0 % PAGE_SIZE, 0);
        assert!(r.addr.0 + 5000 <= 4 << 20);
        let b: u8 = m.read_obj(GuestAddress(r.addr.0 + 4999)).expect("read");
        assert_eq!(b, 7);
    }

    #[test]
    fn initrd_too_big_is_reported() {
        let f = file_with(&[0u8; 3 << 20]);
        let e = load_initrd(&mem(4), f.path(), 2 << 20, 4 << 20).expect_err("too big");
        assert!(matches!(e, LoaderError::InitrdTooBig { .. }), "{e}");
    }
}
