//! The device's side of a split virtqueue (virtio 1.2 section 2.7) on the packet path. The
//! descriptor table, available ring and used ring are resolved to host memory once, when the
//! driver activates the device; `virtio_queue::Queue` instead looks each access up in guest
//! memory, which was ~38 % of the RX path's user-space instructions. Used entries are shown
//! to the driver by one store of the used index per batch ([`SplitRing::publish_used`]).
//!
//! Areas (offsets in bytes, `N` the queue size): the available ring is `flags: le16`,
//! `idx: le16`, `ring[N]: le16`, `used_event: le16`; the used ring is `flags: le16`,
//! `idx: le16`, `ring[N]: {id: le32, len: le32}`, `avail_event: le16` (2.7.6, 2.7.8).

mod descriptors;
mod host_area;
mod host_regions;
mod suppression;

use std::num::Wrapping;
use std::sync::atomic::Ordering;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap, VolatileSlice};

use self::descriptors::DESCRIPTOR_LEN;
pub use self::descriptors::{BrokenChain, ChainDescriptors, Descriptor};
use self::host_area::HostArea;
use self::host_regions::HostRegions;

/// Bytes before the first entry of either ring (`flags`, `idx`).
const RING_HEADER_LEN: usize = 4;
/// Bytes per available-ring entry.
const AVAIL_ENTRY_LEN: usize = 2;
/// Bytes per used-ring entry.
const USED_ENTRY_LEN: usize = 8;
/// Offset of either ring's `idx`.
const IDX: usize = 2;

/// Why a ring cannot be used: each leaves the device needing a reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The queue was not made ready, or has size 0.
    #[error("queue is not ready or has size 0")]
    NotReady,
    /// An area is not inside one region of guest memory, or misaligned (2.7).
    #[error(
        "{area} at guest address {addr:#x} ({len} bytes) is outside guest memory or misaligned"
    )]
    Area {
        /// "descriptor table", "available ring" or "used ring".
        area: &'static str,
        /// Its guest physical address.
        addr: u64,
        /// Its length in bytes for the queue's size.
        len: usize,
    },
    /// The available index ran ahead of the device by more than the queue holds.
    #[error("available index moved {0} entries ahead, more than the queue holds")]
    AvailIndexJump(u16),
    /// The available ring names a descriptor past the table.
    #[error("available ring names descriptor {0}, past the table")]
    HeadPastTable(u16),
}

/// The device's side of one split virtqueue. Owns a clone of guest memory, which keeps the
/// areas' host addresses valid.
#[derive(Debug)]
pub struct SplitRing {
    /// Keeps the mappings that `regions` and the areas point into.
    _mem: GuestMemoryMmap,
    /// `mem`'s regions, for the buffers descriptors point to.
    regions: HostRegions,
    size: u16,
    desc_table: HostArea,
    avail_ring: HostArea,
    used_ring: HostArea,
    /// The next available-ring entry to take.
    next_avail: Wrapping<u16>,
    /// The available index as read last (Acquire): entries before it are ready.
    avail_idx: Wrapping<u16>,
    /// The next used-ring entry to write.
    next_used: Wrapping<u16>,
    /// The used index the driver was shown last.
    published_used: Wrapping<u16>,
    /// VIRTIO_F_EVENT_IDX: `used_event` and `avail_event` suppress notifications.
    event_idx: bool,
}

impl SplitRing {
    /// The ring the driver configured in `queue`, in `mem`; `event_idx` when the driver
    /// negotiated VIRTIO_F_EVENT_IDX.
    ///
    /// # Errors
    /// [`RingError::NotReady`], or [`RingError::Area`] naming the area that does not lie in
    /// one region of `mem` with its alignment (16, 2 and 4 bytes).
    pub fn new(queue: &Queue, mem: GuestMemoryMmap, event_idx: bool) -> Result<Self, RingError> {
        let size = queue.size();
        if !queue.ready() || size == 0 {
            return Err(RingError::NotReady);
        }
        let n = usize::from(size);
        let desc_table = HostArea::resolve(
            &mem,
            "descriptor table",
            GuestAddress(queue.desc_table()),
            n * DESCRIPTOR_LEN,
            16,
        )?;
        let avail_ring = HostArea::resolve(
            &mem,
            "available ring",
            GuestAddress(queue.avail_ring()),
            RING_HEADER_LEN + n * AVAIL_ENTRY_LEN + 2,
            2,
        )?;
        let used_ring = HostArea::resolve(
            &mem,
            "used ring",
            GuestAddress(queue.used_ring()),
            RING_HEADER_LEN + n * USED_ENTRY_LEN + 2,
            4,
        )?;
        let next_avail = Wrapping(queue.next_avail());
        let next_used = Wrapping(queue.next_used());
        Ok(Self {
            regions: HostRegions::of(&mem),
            _mem: mem,
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_avail,
            avail_idx: next_avail,
            next_used,
            published_used: next_used,
            event_idx,
        })
    }

    /// The `len` bytes of guest memory at `addr` (a buffer a descriptor points to), if one
    /// region of guest memory holds them all.
    #[inline]
    pub fn buffer(&self, addr: GuestAddress, len: usize) -> Option<VolatileSlice<'_>> {
        self.regions.slice(addr, len)
    }

    /// Whether the `len` bytes at host address `host` lie in one region of guest memory
    /// (one mapping): then a single copy may write them all.
    #[inline]
    pub fn holds_host_range(&self, host: *const u8, len: usize) -> bool {
        self.regions.holds_host_range(host, len)
    }

    /// The queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The next available-ring position the device will take.
    pub fn next_avail(&self) -> Wrapping<u16> {
        self.next_avail
    }

    /// The available index now (Acquire).
    ///
    /// # Errors
    /// [`RingError::AvailIndexJump`] when it is more than the queue size ahead.
    #[inline]
    pub fn avail_idx(&self) -> Result<Wrapping<u16>, RingError> {
        let idx = Wrapping(self.avail_ring.load_u16(IDX, Ordering::Acquire));
        let ahead = (idx - self.next_avail).0;
        if ahead > self.size {
            return Err(RingError::AvailIndexJump(ahead));
        }
        Ok(idx)
    }

    /// Take the next available chain: its head index, or `None` when the driver has made no
    /// more available. The available index is read again only when the entries known to be
    /// ready are used up.
    ///
    /// # Errors
    /// [`RingError::AvailIndexJump`] or [`RingError::HeadPastTable`].
    #[inline(always)]
    pub fn pop(&mut self) -> Result<Option<u16>, RingError> {
        if self.next_avail == self.avail_idx {
            self.avail_idx = self.avail_idx()?;
            if self.next_avail == self.avail_idx {
                return Ok(None);
            }
        }
        let slot = usize::from(self.next_avail.0 % self.size);
        let head = self
            .avail_ring
            .load_u16(RING_HEADER_LEN + slot * AVAIL_ENTRY_LEN, Ordering::Relaxed);
        if head >= self.size {
            return Err(RingError::HeadPastTable(head));
        }
        self.next_avail += 1;
        Ok(Some(head))
    }

    /// Put the chain taken last back: the next [`SplitRing::pop`] returns it again. Only
    /// for chains popped and not yet returned with [`SplitRing::add_used`]; putting back
    /// more would hand the same chain out twice.
    pub fn unpop(&mut self) {
        self.next_avail -= 1;
    }

    /// The descriptors of the chain whose head [`SplitRing::pop`] returned.
    #[inline]
    pub fn descriptors(&self, head: u16) -> ChainDescriptors<'_> {
        ChainDescriptors::new(self.desc_table, self.size, head)
    }

    /// Return the chain `head` to the driver, the device having written `len` bytes into it.
    /// The driver sees it after [`SplitRing::publish_used`].
    #[inline(always)]
    pub fn add_used(&mut self, head: u16, len: u32) {
        let slot = usize::from(self.next_used.0 % self.size);
        let entry = RING_HEADER_LEN + slot * USED_ENTRY_LEN;
        self.used_ring
            .store_u32(entry, u32::from(head), Ordering::Relaxed);
        self.used_ring.store_u32(entry + 4, len, Ordering::Relaxed);
        self.next_used += 1;
    }
}

#[cfg(test)]
mod tests;
