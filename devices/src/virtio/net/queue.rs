//! What the TX and RX queues share: the device parts they use while they work, how they
//! stop, and the check that the driver's ring is still sane.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::stages::Stages;
use crate::virtio::VirtioInterrupt;

/// The parts of the device a queue uses while it processes frames.
pub(super) struct QueueIo<'a, B> {
    /// Guest memory (rings and buffers).
    pub(super) mem: &'a GuestMemoryMmap,
    /// How the device tells the driver about used buffers.
    pub(super) interrupt: &'a VirtioInterrupt,
    /// The host side (a TAP).
    pub(super) backend: &'a mut B,
    /// The NIC's stages.
    pub(super) stages: &'a mut Stages,
}

/// Why a queue stopped processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Nothing more to do until the guest, the backend or a timer says so.
    Idle,
    /// A queue's worth done and more may be waiting: the device kicks the queue again after
    /// the other queues and devices had their turn.
    Yield,
    /// The shaper made this direction wait this long.
    Throttled(Duration),
    /// The driver's ring is unusable (the reason): the device needs a reset.
    Broken(&'static str),
}

/// Whether the available index moved further than a ring can hold (a driver bug or an
/// attack); then nothing in the ring can be trusted.
pub(super) fn avail_index_invalid(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    match queue.avail_idx(mem, Ordering::Acquire) {
        Ok(idx) => (idx - Wrapping(queue.next_avail())).0 > queue.size(),
        Err(_) => true,
    }
}
