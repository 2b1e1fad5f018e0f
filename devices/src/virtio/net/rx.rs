//! The receive queue and its pipeline. [`RxQueue::receive`] takes one frame through the
//! stages, in the order it calls them: guest buffer (descriptor chain) → shaper admission →
//! TAP (the backend) → virtio header (fields of features not negotiated cleared) → frame
//! checks → guest → audit. The audit comes last so that it records what happened: a frame
//! that could not be put in the guest's buffer is not `forwarded`.
//!
//! A guest buffer is taken first, so a frame is read only when there is room for it
//! (backpressure: with no buffer, the TAP is not read at all). `readv(2)` puts the frame's
//! first bytes into the queue's own buffer (what the stages read) and the rest straight into
//! guest memory; the first bytes are then copied into the chain.

use std::io::ErrorKind;
use std::sync::Arc;

use packet::{Direction, Verdict};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::backend::NetBackend;
use super::chain::{rx_iovs, scatter, ChainError, IovecBuf};
use super::counters::{add, inc, NetCounters, RxCounters};
use super::frame_checks::{check_link_len, check_rx_frame, read_headers, FrameError};
use super::queue::{avail_index_invalid, QueueIo, Stop};
use super::stages::Wait;
use super::vnet_hdr::{clear_unnegotiated, HeaderDirection, NUM_BUFFERS};
use super::{HEAD_LEN, QUEUE_SIZE, VNET_HDR_LEN};

/// Where one guest buffer's trip through the pipeline ended.
enum Received {
    /// The chain goes back to the guest with this many bytes written (0: nothing usable).
    Used(u32),
    /// The shaper holds frames back: the chain stays in the ring.
    Wait(Wait),
    /// No frame in the backend: the chain stays in the ring.
    Empty,
}

/// The receive queue while the driver has the device running.
pub(super) struct RxQueue {
    queue: Queue,
    /// The first bytes of the frame being received: the device's own copy.
    head: Box<[u8; HEAD_LEN]>,
    /// Catches the first byte of a frame longer than the guest's buffer.
    spare: [u8; 1],
    /// Where that frame goes: `head`, the guest's buffers after those bytes, `spare`.
    iovs: IovecBuf,
    counters: Arc<NetCounters>,
    /// No guest buffer: stop reading the backend until the guest kicks RX.
    pub(super) blocked: bool,
    /// Out of tokens: frames wait in the backend until the shaper timer.
    pub(super) throttled: bool,
    /// A frame waited in the TAP for the shaper: the next one delivered is recorded as
    /// delayed (the TAP does not say how many waited).
    delayed: bool,
    /// The features the driver negotiated (which virtio header fields it may see).
    acked_features: u64,
    /// The MTU the driver was told (VIRTIO_NET_F_MTU negotiated): no longer frame goes to it.
    mtu: Option<usize>,
}

impl RxQueue {
    /// The driver's RX `queue` under features `acked_features`, counting into `counters`;
    /// frames longer than `mtu` (plus the Ethernet header) are not delivered.
    pub(super) fn new(
        queue: Queue,
        counters: Arc<NetCounters>,
        acked_features: u64,
        mtu: Option<usize>,
    ) -> Self {
        Self {
            queue,
            head: Box::new([0u8; HEAD_LEN]),
            spare: [0u8; 1],
            iovs: IovecBuf::with_capacity(usize::from(QUEUE_SIZE)),
            counters,
            blocked: false,
            throttled: false,
            delayed: false,
            acked_features,
            mtu,
        }
    }

    fn counters(&self) -> &RxCounters {
        &self.counters.rx
    }

    /// Deliver backend frames while the guest has buffers, at most a queue's worth per call
    /// (the backend's readiness brings the device back for the rest).
    pub(super) fn process<B: NetBackend>(&mut self, io: &mut QueueIo<'_, B>) -> Stop {
        if self.throttled {
            return Stop::Idle;
        }
        if avail_index_invalid(&self.queue, io.mem) {
            return Stop::Broken("RX avail index moved by more than the queue size");
        }
        let mut returned = 0u16;
        let mut stop = Stop::Idle;
        while returned < QUEUE_SIZE {
            let Some(chain) = self.queue.pop_descriptor_chain(io.mem) else {
                if let Ok(true) = self.queue.enable_notification(io.mem) {
                    continue;
                }
                self.blocked = true;
                inc(&self.counters().no_buffer);
                break;
            };
            let head = chain.head_index();
            let used_len = match self.receive(chain, io) {
                Received::Used(len) => len,
                Received::Wait(wait) => {
                    self.queue.go_to_previous_position();
                    self.throttled = true;
                    self.delayed |= wait.frame_waits;
                    inc(&self.counters().throttled);
                    stop = Stop::Throttled(wait.after);
                    break;
                }
                Received::Empty => {
                    self.queue.go_to_previous_position();
                    self.delayed = false;
                    break;
                }
            };
            if self.queue.add_used(io.mem, head, used_len).is_err() {
                return Stop::Broken("RX used ring is outside guest memory");
            }
            returned += 1;
        }
        if returned > 0 && self.queue.needs_notification(io.mem).unwrap_or(true) {
            io.interrupt.signal_used_queue();
        }
        stop
    }

    /// One frame through the RX pipeline; the stages run in the order written here.
    fn receive<B: NetBackend>(
        &mut self,
        chain: DescriptorChain<&GuestMemoryMmap>,
        io: &mut QueueIo<'_, B>,
    ) -> Received {
        // Guest buffer: popped by the caller.
        // Shaper admission: a frame that must wait stays in the backend.
        let backend = &*io.backend;
        if let Some(wait) = io.stages.admit(Direction::Rx, || backend.readable()) {
            return Received::Wait(wait);
        }
        let mut walk = chain.clone();
        let capacity = match rx_iovs(
            &mut walk,
            &mut self.head[..],
            &mut self.spare,
            &mut self.iovs,
        ) {
            Ok(capacity) => capacity,
            Err(e) => {
                // The chain is unusable; the frame stays in the backend for the next one.
                log::debug!("virtio-net RX: unusable chain {}: {e}", chain.head_index());
                inc(&self.counters().malformed_chains);
                return Received::Used(0);
            }
        };
        // TAP.
        // SAFETY: the iovecs point to `head`, `spare` and guest buffers that rx_iovs checked
        // with get_slice and `io.mem` keeps mapped for this whole call.
        let n = match unsafe { io.backend.read_iov(self.iovs.as_slice()) } {
            Ok(n) => n,
            Err(e) => {
                if e.kind() == ErrorKind::WouldBlock {
                    io.stages.idle(Direction::Rx);
                } else {
                    log::debug!("virtio-net RX: backend read: {e}");
                }
                return Received::Empty;
            }
        };
        io.stages
            .charge(Direction::Rx, n.saturating_sub(VNET_HDR_LEN));
        // Frame checks: a read shorter than the virtio header carries nothing to record; a
        // frame longer than the guest's buffer (it reached the spare byte) is dropped, and
        // recorded with what its first bytes say; headers must parse when a stage reads them.
        let length = check_rx_frame(n, capacity);
        if let Err(e @ FrameError::Runt(_)) = length {
            log::debug!("virtio-net RX: dropping frame: {e}");
            inc(&self.counters().dropped);
            return Received::Used(0);
        }
        let head_len = n.min(HEAD_LEN);
        let frame_len = n - VNET_HDR_LEN;
        // Virtio header: what the driver did not negotiate does not reach the guest.
        if clear_unnegotiated(
            &mut self.head[..head_len],
            self.acked_features,
            HeaderDirection::Rx,
        ) {
            inc(&self.counters().header_fields_cleared);
        }
        self.head[NUM_BUFFERS..NUM_BUFFERS + 2].copy_from_slice(&1u16.to_le_bytes());
        let headers = &self.head[VNET_HDR_LEN..head_len];
        let length = length.and_then(|()| check_link_len(frame_len, headers, self.mtu));
        let checked = read_headers(headers, frame_len, io.stages.reads_headers());
        let parsed = checked.unwrap_or(None);
        // Guest: the device's copy of the first bytes goes into the chain's start.
        let verdict = match (length, checked) {
            (Err(e), _) => {
                log::debug!("virtio-net RX: dropping frame: {e}");
                Verdict::DroppedMalformed
            }
            (Ok(()), Err(dropped)) => dropped,
            (Ok(()), Ok(_)) => {
                let mut chain = chain;
                match scatter(&mut chain, &self.head[..head_len]) {
                    Ok(()) if std::mem::take(&mut self.delayed) => Verdict::Delayed,
                    Ok(()) => Verdict::Forwarded,
                    Err(e) => {
                        // Cannot happen for a chain rx_iovs accepted, short of the guest
                        // rewriting its descriptors meanwhile; then the frame is lost.
                        log::debug!("virtio-net RX: writing frame head: {e}");
                        if e != ChainError::TooSmall {
                            inc(&self.counters().malformed_chains);
                        }
                        Verdict::DroppedMalformed
                    }
                }
            }
        };
        // Audit: what happened to the frame.
        let headers = &self.head[VNET_HDR_LEN..head_len];
        io.stages
            .audit(Direction::Rx, headers, frame_len, parsed.as_ref(), verdict);
        if !verdict.passes() {
            inc(&self.counters().dropped);
            return Received::Used(0);
        }
        inc(&self.counters().packets);
        add(
            &self.counters().bytes,
            u64::try_from(frame_len).unwrap_or(u64::MAX),
        );
        Received::Used(u32::try_from(n).unwrap_or(u32::MAX))
    }
}
