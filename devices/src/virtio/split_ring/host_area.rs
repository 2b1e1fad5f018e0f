//! One of a split virtqueue's three areas (descriptor table, available ring, used ring) as a
//! range of host memory, read and written with atomic accesses: the driver shares it and may
//! change it at any time.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::RingError;

/// `len` bytes of guest memory at a host address, aligned as the area's kind requires. Valid
/// while the [`GuestMemoryMmap`] it was resolved from lives (the ring keeps a clone).
#[derive(Debug, Clone, Copy)]
pub(super) struct HostArea {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the area is plain shared memory, accessed only atomically, by whichever thread owns
// the ring; the mapping lives as long as the ring's clone of guest memory.
unsafe impl Send for HostArea {}

impl HostArea {
    /// The `len` bytes at guest address `addr` (one mapped region must hold them all), which
    /// must be aligned to `align` bytes (virtio 1.2 section 2.7: 16, 2 and 4).
    ///
    /// # Errors
    /// [`RingError::Area`] naming `area` when the range is not in one region or misaligned.
    pub(super) fn resolve(
        mem: &GuestMemoryMmap,
        area: &'static str,
        addr: GuestAddress,
        len: usize,
        align: u64,
    ) -> Result<Self, RingError> {
        let bad = || RingError::Area {
            area,
            addr: addr.0,
            len,
        };
        if !addr.0.is_multiple_of(align) {
            return Err(bad());
        }
        let slice = mem.get_slice(addr, len).map_err(|_| bad())?;
        let base = NonNull::new(slice.ptr_guard_mut().as_ptr()).ok_or_else(bad)?;
        Ok(Self { base, len })
    }

    /// The address of the `T` at byte `offset`.
    ///
    /// # Panics
    /// When `T` does not fit at `offset` or is misaligned there: the ring's own offsets are
    /// reduced modulo the queue size, so this is a bug in this module, never the driver's.
    #[inline]
    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + std::mem::size_of::<T>() <= self.len,
            "ring access at {offset} outside its {}-byte area",
            self.len
        );
        // SAFETY: `offset` is within the area (asserted), which lies in one mapped region.
        let ptr: *mut T = unsafe { self.base.as_ptr().add(offset).cast() };
        assert!(ptr.is_aligned(), "misaligned ring access at {offset}");
        ptr
    }

    /// The little-endian `u16` at `offset`.
    #[inline]
    pub(super) fn load_u16(&self, offset: usize, order: Ordering) -> u16 {
        // SAFETY: `at` checked bounds and alignment; the mapping outlives `self` (see the type);
        // the driver's concurrent writes are why the access is atomic.
        u16::from_le(unsafe { AtomicU16::from_ptr(self.at(offset)) }.load(order))
    }

    /// The little-endian `u64` at `offset`.
    #[inline]
    pub(super) fn load_u64(&self, offset: usize, order: Ordering) -> u64 {
        // SAFETY: as in `load_u16`.
        u64::from_le(unsafe { AtomicU64::from_ptr(self.at(offset)) }.load(order))
    }

    /// Store `value` little-endian at `offset`.
    #[inline]
    pub(super) fn store_u16(&self, offset: usize, value: u16, order: Ordering) {
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU16::from_ptr(self.at(offset)) }.store(value.to_le(), order);
    }

    /// Store `value` little-endian at `offset`.
    #[inline]
    pub(super) fn store_u32(&self, offset: usize, value: u32, order: Ordering) {
        // SAFETY: as in `load_u16`.
        unsafe { AtomicU32::from_ptr(self.at(offset)) }.store(value.to_le(), order);
    }
}
