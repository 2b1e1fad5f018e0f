//! KVM's supported CPUID table kept in a file: asked of KVM once per node, read by each VMM.
//!
//! `KVM_GET_SUPPORTED_CPUID` makes the host kernel run `cpuid` for every leaf. Where the host
//! is itself a virtual machine each of those is a trap, and the ioctl took ~1 ms of a VMM's
//! ~5 ms start (docs/benchmarks.md, issue 16's ninth part). So the node daemon asks once at
//! its start ([`save`]) and hands the file to every VMM it starts (`run --supported-cpuid
//! PATH`, [`load`]).
//!
//! What the answer depends on besides the KVM module (and its parameters), so what the saved
//! table freezes at the daemon's start:
//! - the host CPU the ioctl ran on: its APIC id in leaf 1 EBX\[31:24\] and leaves 0xB and
//!   0x1F EDX, which [`crate::arch::cpuid::for_vcpu`] replaces with the vCPU's own; on hybrid
//!   hosts (performance and efficiency cores) the cache leaves (2, 4, 0x8000_0005/6) of that
//!   core's type, as a VMM asking for itself gets those of whichever core it ran on;
//! - the asking process's permission for AMX guest state (`ARCH_REQ_XCOMP_GUEST_PERM`,
//!   leaf 0xD): neither the daemon nor the VMM asks for it, so the two answers agree; a VMM
//!   that ever does must ask KVM itself.
//!
//! A KVM module reloaded with other parameters needs a daemon restart.
//!
//! File format: the table's entries back to back, each the 40 bytes of
//! `struct kvm_cpuid_entry2` of `<linux/kvm.h>` as x86-64 lays it out: `function`, `index`,
//! `flags`, `eax`, `ebx`, `ecx`, `edx`, `padding[3]`, every one a little-endian `__u32`.

use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_cpuid_entry2, CpuId};
use kvm_ioctls::Kvm;

/// The file's name in the node daemon's state directory.
pub const FILE_NAME: &str = "kvm-supported-cpuid";
/// Bytes per entry: ten `__u32` (`struct kvm_cpuid_entry2`, `<linux/kvm.h>`).
pub const ENTRY_BYTES: usize = 40;
/// Most entries asked of `KVM_GET_SUPPORTED_CPUID` (and accepted in a file): Linux's own
/// limit, `KVM_MAX_CPUID_ENTRIES` of `arch/x86/include/asm/kvm_host.h` (256).
pub const MAX_ENTRIES: usize = kvm_bindings::KVM_MAX_CPUID_ENTRIES;

/// Errors asking KVM for the table or reading and writing its file; each names the file
/// (the caller names the flag or the step).
#[derive(Debug, thiserror::Error)]
pub enum CpuidTableError {
    /// /dev/kvm could not be opened.
    #[error("/dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Kvm(#[source] kvm_ioctls::Error),
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a table of whole entries, or holds none or too many.
    #[error("{path}: {len} bytes is not 1..={MAX_ENTRIES} entries of {ENTRY_BYTES} bytes")]
    Length {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Not a regular file (a directory, a FIFO, a device).
    #[error("{path}: not a regular file")]
    NotAFile {
        /// The file.
        path: PathBuf,
    },
    /// A leaf that KVM always answers (0 or 1) has no entry: the file holds something else.
    #[error("{path}: no entry for CPUID leaf {leaf:#x}: not a table KVM gave")]
    MissingLeaf {
        /// The file.
        path: PathBuf,
        /// The leaf.
        leaf: u32,
    },
}

/// Ask `kvm` for its supported CPUID table.
///
/// # Errors
/// The ioctl's error.
pub fn ask(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(MAX_ENTRIES)
}

/// The table as the file holds it ([`ENTRY_BYTES`] per entry).
pub fn encode(table: &CpuId) -> Vec<u8> {
    let mut out = Vec::with_capacity(table.as_slice().len() * ENTRY_BYTES);
    for e in table.as_slice() {
        let words = [
            e.function,
            e.index,
            e.flags,
            e.eax,
            e.ebx,
            e.ecx,
            e.edx,
            e.padding[0],
            e.padding[1],
            e.padding[2],
        ];
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// The table `bytes` hold; `None` unless they are 1..=[`MAX_ENTRIES`] whole entries.
pub fn decode(bytes: &[u8]) -> Option<CpuId> {
    let count = bytes.len() / ENTRY_BYTES;
    if !bytes.len().is_multiple_of(ENTRY_BYTES) || !(1..=MAX_ENTRIES).contains(&count) {
        return None;
    }
    let entries: Vec<kvm_cpuid_entry2> = bytes
        .chunks_exact(ENTRY_BYTES)
        .map(|chunk| {
            let mut w = [0u32; 10];
            for (word, b) in w.iter_mut().zip(chunk.chunks_exact(4)) {
                *word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            kvm_cpuid_entry2 {
                function: w[0],
                index: w[1],
                flags: w[2],
                eax: w[3],
                ebx: w[4],
                ecx: w[5],
                edx: w[6],
                padding: [w[7], w[8], w[9]],
            }
        })
        .collect();
    CpuId::from_entries(&entries).ok()
}

/// Ask KVM (/dev/kvm) for the table and write it to `path` (replaced whole: written beside
/// it, then renamed; nothing is left beside it on failure).
///
/// # Errors
/// [`CpuidTableError::OpenKvm`] or [`CpuidTableError::Kvm`] when /dev/kvm cannot be opened
/// or asked; [`CpuidTableError::Io`] when the file cannot be written.
pub fn save(path: &Path) -> Result<(), CpuidTableError> {
    let kvm = Kvm::new().map_err(CpuidTableError::OpenKvm)?;
    let table = ask(&kvm).map_err(CpuidTableError::Kvm)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, encode(&table))
        .map_err(|source| (tmp.clone(), source))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|source| (path.to_owned(), source)));
    written.map_err(|(path, source)| {
        let _ = std::fs::remove_file(&tmp);
        CpuidTableError::Io { path, source }
    })
}

/// The table in the file at `path`: a regular file of at most [`MAX_ENTRIES`] entries
/// (nothing more is read), among them leaves 0 and 1.
///
/// # Errors
/// [`CpuidTableError::Io`] when it cannot be read, [`CpuidTableError::NotAFile`] when it is
/// not a regular file (a FIFO is refused, not waited on), [`CpuidTableError::Length`] when it
/// is not a table of whole entries, [`CpuidTableError::MissingLeaf`] when leaf 0 or 1 is
/// not in it.
pub fn load(path: &Path) -> Result<CpuId, CpuidTableError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CpuidTableError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(CpuidTableError::NotAFile {
            path: path.to_owned(),
        });
    }
    let most = MAX_ENTRIES * ENTRY_BYTES;
    let mut bytes = Vec::with_capacity(most);
    file.take(most as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let table = decode(&bytes).ok_or_else(|| CpuidTableError::Length {
        path: path.to_owned(),
        len: bytes.len(),
    })?;
    for leaf in [0, 1] {
        if !table.as_slice().iter().any(|e| e.function == leaf) {
            return Err(CpuidTableError::MissingLeaf {
                path: path.to_owned(),
                leaf,
            });
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_the_kernel_structs_forty_bytes() {
        assert_eq!(std::mem::size_of::<kvm_cpuid_entry2>(), ENTRY_BYTES);
    }

    #[test]
    fn a_table_reads_back_as_written_field_by_field() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0x1,
                index: 0,
                flags: 0,
                eax: 0x000806c1,
                ebx: 0x0001_0800,
                ecx: 0xfeda_3203,
                edx: 0x178b_fbff,
                padding: [0; 3],
            },
            kvm_cpuid_entry2 {
                function: 0x7,
                index: 1,
                flags: 1, // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
                eax: 7,
                ebx: 0,
                ecx: 0,
                edx: 0x10,
                padding: [0; 3],
            },
        ];
        let table = CpuId::from_entries(&entries).expect("table");
        let bytes = encode(&table);
        assert_eq!(bytes.len(), 2 * ENTRY_BYTES);
        // The second entry's `index` (bytes 4..8) and `flags` (8..12), little-endian.
        assert_eq!(
            &bytes[ENTRY_BYTES + 4..ENTRY_BYTES + 12],
            &[1, 0, 0, 0, 1, 0, 0, 0]
        );
        assert_eq!(decode(&bytes).expect("decodes").as_slice(), &entries);
    }

    #[test]
    fn a_file_of_broken_or_no_entries_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cpuid");
        for len in [0, 39, 41] {
            std::fs::write(&path, vec![0u8; len]).expect("write");
            let err = load(&path).expect_err("refused").to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(&format!("{len} bytes")), "{err}");
        }
        // Read no further than the longest table and a byte.
        std::fs::write(&path, vec![0u8; 1 << 20]).expect("write");
        let err = load(&path).expect_err("refused").to_string();
        assert!(
            err.contains(&format!("{} bytes", MAX_ENTRIES * ENTRY_BYTES + 1)),
            "{err}"
        );
        // Whole entries, but not what KVM gives: no leaf 1, then no leaf 0.
        std::fs::write(&path, [0u8; ENTRY_BYTES]).expect("write");
        let err = load(&path).expect_err("refused").to_string();
        assert!(
            err.ends_with("no entry for CPUID leaf 0x1: not a table KVM gave"),
            "{err}"
        );
        let mut leaf1 = [0u8; ENTRY_BYTES];
        leaf1[0] = 1;
        std::fs::write(&path, leaf1).expect("write");
        let err = load(&path).expect_err("refused").to_string();
        assert!(err.contains("CPUID leaf 0x0"), "{err}");
        let missing = load(&dir.path().join("none")).expect_err("missing");
        assert!(missing.to_string().contains("none"), "{missing}");
        // A directory, and a FIFO nobody writes (refused at once, not waited on).
        let err = load(dir.path()).expect_err("a directory").to_string();
        assert!(err.ends_with("not a regular file"), "{err}");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo(3) on a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = load(&fifo).expect_err("a FIFO").to_string();
        assert!(err.ends_with("not a regular file"), "{err}");
    }

    /// A directory to save tables in, on a machine with KVM (`None`, saying so, without).
    fn kvm_and_a_directory() -> Option<tempfile::TempDir> {
        if !Path::new("/dev/kvm").exists() {
            eprintln!("SKIP: no /dev/kvm on this machine");
            return None;
        }
        Some(tempfile::tempdir().expect("tempdir"))
    }

    #[test]
    fn a_failed_save_names_the_file_it_could_not_write_and_leaves_nothing() {
        let Some(dir) = kvm_and_a_directory() else {
            return;
        };
        let path = dir.path().join("missing-dir").join("cpuid");
        let err = save(&path).expect_err("no such directory").to_string();
        assert!(err.contains("cpuid.new"), "{err}");
        // The rename fails: a directory is in the table's place.
        let path = dir.path().join("cpuid");
        std::fs::create_dir_all(path.join("x")).expect("mkdir");
        let err = save(&path).expect_err("a directory in the way").to_string();
        assert!(err.starts_with(&format!("{}:", path.display())), "{err}");
        assert!(
            !dir.path().join("cpuid.new").exists(),
            "nothing left beside it"
        );
    }

    #[test]
    fn what_is_saved_is_what_kvm_answers() {
        let Some(dir) = kvm_and_a_directory() else {
            return;
        };
        let path = dir.path().join("cpuid");
        save(&path).expect("save");
        let asked = ask(&Kvm::new().expect("kvm")).expect("ask");
        // KVM's answer names the host CPU it ran on in the APIC id fields (leaf 1 EBX, leaf
        // 0xB EDX), which the vCPU's own id replaces: compare what a vCPU gets.
        let vcpu = |t: &CpuId| crate::arch::cpuid::for_vcpu(t, 0, 1, false);
        assert_eq!(vcpu(&load(&path).expect("load")), vcpu(&asked));
    }
}
