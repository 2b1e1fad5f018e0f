//! Guest RAM: how much, where it sits around the 32-bit MMIO hole, and the map the guest sees.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START};

/// Smallest guest memory that can hold the boot structures and a kernel above 1 MiB.
pub const MIN_MEM_MIB: u64 = 2;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Below the minimum.
    #[error("--mem-mib {0}: guest memory must be at least {MIN_MEM_MIB} MiB")]
    TooSmall(u64),
    /// Above what the host has.
    #[error("--mem-mib {requested}: more than the host's {host_mib} MiB of memory")]
    MoreThanHost {
        /// Requested MiB.
        requested: u64,
        /// Host total MiB.
        host_mib: u64,
    },
    /// mmap failed.
    #[error("allocating {0} MiB of guest memory: {1}")]
    Allocate(u64, vm_memory::mmap::FromRangesError),
}

/// The guest's RAM ranges for `mem_mib` MiB: below the MMIO hole, and the rest above 4 GiB.
pub fn ram_ranges(mem_mib: u64) -> Vec<(GuestAddress, usize)> {
    let bytes = mem_mib << 20;
    if bytes <= MMIO_GAP_START {
        vec![(GuestAddress(0), bytes as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (
                GuestAddress(MMIO_GAP_END),
                (bytes - MMIO_GAP_START) as usize,
            ),
        ]
    }
}

/// End (exclusive) of RAM below the MMIO hole: where the initrd is placed from the top.
pub fn low_ram_end(mem_mib: u64) -> u64 {
    (mem_mib << 20).min(MMIO_GAP_START)
}

/// Total host memory in MiB, from /proc/meminfo.
pub fn host_mem_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Check `mem_mib` against the minimum and the host.
pub fn validate_size(mem_mib: u64, host_mib: Option<u64>) -> Result<(), MemoryError> {
    if mem_mib < MIN_MEM_MIB {
        return Err(MemoryError::TooSmall(mem_mib));
    }
    if let Some(host_mib) = host_mib {
        if mem_mib > host_mib {
            return Err(MemoryError::MoreThanHost {
                requested: mem_mib,
                host_mib,
            });
        }
    }
    Ok(())
}

/// Allocate guest memory (anonymous, lazily backed) after validating the size.
pub fn create(mem_mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    validate_size(mem_mib, host_mem_mib())?;
    GuestMemoryMmap::from_ranges(&ram_ranges(mem_mib))
        .map_err(|e| MemoryError::Allocate(mem_mib, e))
}

/// One entry of the memory map the guest is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
}

/// Usable RAM as the guest should see it: low memory below the EBDA, then everything from
/// 1 MiB (the legacy VGA/BIOS hole is left out).
pub fn usable_ram(mem_mib: u64) -> Vec<MapEntry> {
    let mut map = vec![MapEntry {
        addr: 0,
        size: EBDA_START,
    }];
    for (start, len) in ram_ranges(mem_mib) {
        let end = start.0 + len as u64;
        let from = start.0.max(HIMEM_START);
        if end > from {
            map.push(MapEntry {
                addr: from,
                size: end - from,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(128), vec![(GuestAddress(0), 128 << 20)]);
        assert_eq!(low_ram_end(128), 128 << 20);
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        let r = ram_ranges(4096);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1].0, GuestAddress(MMIO_GAP_END));
        assert_eq!(r[0].1 + r[1].1, 4096 << 20);
        assert_eq!(low_ram_end(4096), MMIO_GAP_START);
    }

    #[test]
    fn usable_map_leaves_out_the_legacy_hole() {
        let map = usable_ram(128);
        assert_eq!(
            map,
            vec![
                MapEntry {
                    addr: 0,
                    size: EBDA_START
                },
                MapEntry {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START
                },
            ]
        );
        let big = usable_ram(4096);
        assert_eq!(big.len(), 3);
        assert_eq!(big[2].addr, MMIO_GAP_END);
    }

    #[test]
    fn size_limits_name_the_flag() {
        let e = validate_size(0, Some(1024)).expect_err("zero");
        assert!(e.to_string().contains("--mem-mib 0"), "{e}");
        let e = validate_size(4096, Some(1024)).expect_err("too big");
        assert!(e.to_string().contains("1024 MiB"), "{e}");
        validate_size(512, Some(1024)).expect("fits");
    }
}
