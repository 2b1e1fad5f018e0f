//! Guest memory's regions as host addresses, for the buffers descriptors point to: a lookup
//! is a comparison per region (a VM has one or two), not vm-memory's search and bitmap
//! plumbing, which cost the RX path ~150 instructions per frame.

use std::ptr::NonNull;

use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
    VolatileSlice,
};

/// One region: guest physical `start`, `len` bytes, mapped at `host`.
#[derive(Debug, Clone, Copy)]
struct HostRegion {
    start: u64,
    len: u64,
    host: NonNull<u8>,
}

/// Every region of a guest memory. Valid while that [`GuestMemoryMmap`] lives (the ring
/// keeps a clone).
#[derive(Debug)]
pub(super) struct HostRegions(Vec<HostRegion>);

// SAFETY: the addresses are of shared mappings that any thread may access through
// VolatileSlice; they live as long as the ring's clone of guest memory.
unsafe impl Send for HostRegions {}

impl HostRegions {
    /// The regions of `mem` (a region whose host address cannot be had is left out: its
    /// buffers are then refused).
    pub(super) fn of(mem: &GuestMemoryMmap) -> Self {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(HostRegion {
                    start: r.start_addr().0,
                    len: r.len(),
                    host: NonNull::new(host)?,
                })
            })
            .collect();
        Self(regions)
    }

    /// Whether one region's mapping holds all `len` bytes at host address `host`.
    #[inline]
    pub(super) fn holds_host_range(&self, host: *const u8, len: usize) -> bool {
        let (at, len) = (host as u64, len as u64);
        self.0
            .iter()
            .any(|r| holds(r.host.as_ptr() as u64, r.len, at, len))
    }

    /// The `len` bytes at guest address `addr`, if one region holds them all.
    #[inline]
    pub(super) fn slice(&self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'_>> {
        let len64 = u64::try_from(len).ok()?;
        let region = self
            .0
            .iter()
            .find(|r| holds(r.start, r.len, addr.0, len64))?;
        let offset = usize::try_from(addr.0 - region.start).ok()?;
        // SAFETY: `offset + len` is within the region's mapping (checked above), which lives
        // as long as the guest memory this was made from, and so as long as `&self`.
        Some(unsafe { VolatileSlice::new(region.host.as_ptr().add(offset), len) })
    }
}

/// Whether the `size` bytes from `start` hold all `len` bytes from `at` (one address space).
#[inline]
fn holds(start: u64, size: u64, at: u64, len: u64) -> bool {
    at.checked_sub(start)
        .is_some_and(|off| off <= size && len <= size - off)
}
