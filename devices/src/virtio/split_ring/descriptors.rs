//! Walking a descriptor chain through the descriptor table (virtio 1.2 sections 2.7.5 and
//! 2.7.6). Indirect descriptors (2.7.5.3) are refused: the devices do not offer
//! VIRTIO_F_INDIRECT_DESC, and a driver must not use them without it.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::GuestAddress;

use super::host_area::HostArea;
use super::SplitRing;

/// Bytes per descriptor in the table (`struct virtq_desc`).
pub(super) const DESCRIPTOR_LEN: usize = 16;

/// One descriptor: a buffer in guest memory (`struct virtq_desc` without `next`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: GuestAddress,
    /// The buffer's length in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` flags.
    pub flags: u16,
}

impl Descriptor {
    /// VIRTQ_DESC_F_WRITE: the device writes this buffer (otherwise it reads it).
    pub fn is_write_only(&self) -> bool {
        self.flags & VRING_DESC_F_WRITE as u16 != 0
    }
}

/// Why a chain cannot be followed to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BrokenChain {
    /// More descriptors than the queue has: the chain loops (2.7.5.2).
    #[error("chain has more descriptors than the queue (a loop)")]
    Loop,
    /// A `next` index past the end of the descriptor table.
    #[error("next index {0} is past the descriptor table")]
    NextPastTable(u16),
    /// VIRTQ_DESC_F_INDIRECT, which was not negotiated.
    #[error("indirect descriptor without VIRTIO_F_INDIRECT_DESC")]
    Indirect,
}

/// The descriptors of one chain, in order. After an error it yields nothing more. Borrows
/// the ring, whose guest memory keeps the table mapped.
#[derive(Debug)]
pub struct ChainDescriptors<'a> {
    table: HostArea,
    size: u16,
    next: Option<u16>,
    left: u16,
    ring: PhantomData<&'a SplitRing>,
}

impl ChainDescriptors<'_> {
    /// The chain whose head is `head` (below `size`, checked by the ring) in `table`.
    #[inline]
    pub(super) fn new(table: HostArea, size: u16, head: u16) -> Self {
        Self {
            table,
            size,
            next: Some(head),
            left: size,
            ring: PhantomData,
        }
    }
}

impl Iterator for ChainDescriptors<'_> {
    type Item = Result<Descriptor, BrokenChain>;

    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        let index = self.next.take()?;
        if self.left == 0 {
            return Some(Err(BrokenChain::Loop));
        }
        self.left -= 1;
        // The driver wrote the descriptor before publishing the avail index that the ring
        // read with Acquire: relaxed loads see it.
        let offset = usize::from(index) * DESCRIPTOR_LEN;
        let addr = self.table.load_u64(offset, Ordering::Relaxed);
        let rest = self.table.load_u64(offset + 8, Ordering::Relaxed);
        // `len: le32, flags: le16, next: le16`, read as one little-endian word.
        let descriptor = Descriptor {
            addr: GuestAddress(addr),
            len: rest as u32,
            flags: (rest >> 32) as u16,
        };
        let next = (rest >> 48) as u16;
        if descriptor.flags & VRING_DESC_F_INDIRECT as u16 != 0 {
            return Some(Err(BrokenChain::Indirect));
        }
        if descriptor.flags & VRING_DESC_F_NEXT as u16 != 0 {
            if next >= self.size {
                return Some(Err(BrokenChain::NextPastTable(next)));
            }
            self.next = Some(next);
        }
        Some(Ok(descriptor))
    }
}
