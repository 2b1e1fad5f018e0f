//! What the TX and RX queues share: the device parts they use while they work, and how they
//! stop.

use std::time::Duration;

use super::stages::Stages;
use crate::virtio::split_ring::RingError;
use crate::virtio::VirtioInterrupt;

/// The parts of the device a queue uses while it processes frames (the queue owns its ring,
/// and through it guest memory).
pub(super) struct QueueIo<'a, B> {
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
    Broken(RingError),
}
