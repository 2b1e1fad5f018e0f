//! The transmit queue and its pipeline. [`TxQueue::transmit`] takes one frame through the
//! stages, in the order it calls them: descriptor chain → shaper admission → virtio header
//! (fields of features not negotiated cleared) → frame checks → anti-spoofing → TAP (the
//! backend) → audit. The audit comes last so that it records what happened to the frame: a
//! write the TAP refused is `dropped-backend`, not `forwarded`.
//!
//! The first [`HEAD_LEN`] bytes of each frame (virtio header and the headers the stages read)
//! are copied into the queue's own buffer, so the guest cannot change what was checked; the
//! rest goes from guest memory to the backend with the same `writev(2)`, without a copy.

use std::io::ErrorKind;
use std::num::Wrapping;
use std::sync::Arc;

use packet::{Direction, Verdict};

use super::backend::NetBackend;
use super::chain::{gather_iov, ChainError, Gathered, IovecBuf};
use super::checksum::{check_csum_request, checksum_in_device, NEEDS_CSUM};
use super::counters::{add, inc, NetCounters, TxCounters};
use super::frame_checks::{check_tx_frame, read_headers, FrameError, Refusal};
use super::gso::{Gso, WireSize};
use super::queue::{QueueIo, Stop};
use super::shaper::Allowance;
use super::stages::Stages;
use super::vnet_hdr::{clear_unnegotiated, HeaderDirection};
use super::{FRAME_BUF_LEN, HEAD_LEN, QUEUE_SIZE, VNET_HDR_LEN};
use crate::virtio::split_ring::SplitRing;

/// Where one chain's trip through the pipeline ended.
enum Sent {
    /// Done with the chain (sent or dropped): it goes back to the guest.
    Used,
    /// The shaper holds the frame back this long: the chain stays in the ring.
    Wait(std::time::Duration),
    /// The backend would block: the chain stays in the ring.
    Blocked,
}

/// The transmit queue while the driver has the device running.
pub(super) struct TxQueue {
    ring: SplitRing,
    /// The first bytes of the frame being sent: the device's own copy.
    head: Box<[u8; HEAD_LEN]>,
    /// Where that frame is: `head`, then the rest in guest memory.
    iovs: IovecBuf,
    counters: Arc<NetCounters>,
    /// The shaper's tokens this queue holds during a batch.
    allowance: Allowance,
    /// The backend would block: wait until it is writable.
    pub(super) blocked: bool,
    /// Out of tokens: chains wait in the ring until the shaper timer.
    pub(super) throttled: bool,
    /// After a wait for the shaper: the avail index up to which chains were in the ring
    /// while it lasted (each of them was delayed).
    delayed_until: Option<Wrapping<u16>>,
    /// The features the driver negotiated (which virtio header fields mean anything).
    acked_features: u64,
    /// The host link's MTU when the driver activated the device (`None`: no limit known).
    mtu: Option<usize>,
}

impl TxQueue {
    /// The driver's TX `ring` under features `acked_features`, to a host link of MTU `mtu`,
    /// counting into `counters`.
    pub(super) fn new(
        ring: SplitRing,
        counters: Arc<NetCounters>,
        acked_features: u64,
        mtu: Option<usize>,
    ) -> Self {
        Self {
            ring,
            head: Box::new([0u8; HEAD_LEN]),
            iovs: IovecBuf::with_capacity(usize::from(QUEUE_SIZE)),
            counters,
            allowance: Allowance::default(),
            blocked: false,
            throttled: false,
            delayed_until: None,
            acked_features,
            mtu,
        }
    }

    fn counters(&self) -> &TxCounters {
        &self.counters.tx
    }

    /// Send what the guest queued, at most a queue's worth per call.
    pub(super) fn process<B: NetBackend>(&mut self, io: &mut QueueIo<'_, B>) -> Stop {
        // One batch: the audit reads the clock once for it.
        io.stages.begin_batch();
        let stop = self.process_batch(io);
        io.stages.end_batch();
        io.stages.settle(Direction::Tx, &mut self.allowance);
        stop
    }

    /// The queue goes away (the device is reset): [`Stages::release`].
    pub(super) fn release(&mut self, stages: &Stages) {
        stages.release(Direction::Tx, &mut self.allowance);
    }

    fn process_batch<B: NetBackend>(&mut self, io: &mut QueueIo<'_, B>) -> Stop {
        if self.blocked || self.throttled {
            return Stop::Idle;
        }
        let mut returned = 0u16;
        let stop = loop {
            let head = match self.ring.pop() {
                Ok(Some(head)) => head,
                // Re-arm notifications; if the guest added chains meanwhile, go on.
                Ok(None) => match self.ring.enable_notification() {
                    Ok(true) => continue,
                    Ok(false) => {
                        io.stages.idle(Direction::Tx, &mut self.allowance);
                        break Stop::Idle;
                    }
                    Err(e) => break Stop::Broken(e),
                },
                Err(e) => break Stop::Broken(e),
            };
            let waited = self.waited(self.ring.next_avail() - Wrapping(1));
            match self.transmit(head, waited, io) {
                Sent::Used => {}
                Sent::Wait(wait) => {
                    self.ring.unpop();
                    self.throttled = true;
                    let queued = self.ring.avail_idx().ok();
                    self.delayed_until = queued.or(self.delayed_until);
                    inc(&self.counters().throttled);
                    break Stop::Throttled(wait);
                }
                Sent::Blocked => {
                    self.ring.unpop();
                    self.blocked = true;
                    inc(&self.counters().backend_full);
                    break Stop::Idle;
                }
            }
            self.ring.add_used(head, 0);
            returned += 1;
            if returned >= QUEUE_SIZE {
                break Stop::Yield;
            }
        };
        // The batch's used chains reach the driver at once.
        if self.ring.publish_used() {
            io.interrupt.signal_used_queue();
        }
        stop
    }

    /// Whether the chain at avail position `pos` was in the ring during the last wait for
    /// the shaper.
    fn waited(&mut self, pos: Wrapping<u16>) -> bool {
        let Some(end) = self.delayed_until else {
            return false;
        };
        let ahead = (end - pos).0;
        if ahead > 0 && ahead <= self.ring.size() {
            true
        } else {
            self.delayed_until = None;
            false
        }
    }

    /// Chain `index`'s frame through the TX pipeline; the stages run in the order written
    /// here. `waited`: the chain was in the ring while the queue waited for the shaper.
    fn transmit<B: NetBackend>(
        &mut self,
        index: u16,
        waited: bool,
        io: &mut QueueIo<'_, B>,
    ) -> Sent {
        // Descriptor chain: popped by the caller, not read yet.
        // Shaper admission: a chain that must wait stays in the ring, untouched.
        if let Some(wait) = io.stages.admit(Direction::Tx, &mut self.allowance, || true) {
            return Sent::Wait(wait.after);
        }
        let frame = match gather_iov(
            &self.ring,
            index,
            &mut self.head[..],
            &mut self.iovs,
            FRAME_BUF_LEN,
        ) {
            Ok(frame) => frame,
            Err(e) => {
                log::debug!("virtio-net TX: dropping chain {index}: {e}");
                if e != ChainError::TooLong {
                    inc(&self.counters().malformed_chains);
                }
                inc(&self.counters().dropped);
                return Sent::Used;
            }
        };
        let Gathered { len, head_len } = frame;
        // Virtio header: what the driver did not negotiate does not reach the host.
        let hdr = &mut self.head[..head_len];
        let cleared = clear_unnegotiated(hdr, self.acked_features, HeaderDirection::Tx);
        let gso = Gso::of(&self.head[..head_len]);
        // NEEDS_CSUM kept: the driver negotiated checksum offload and asks for it.
        let csum_requested = head_len >= VNET_HDR_LEN && self.head[0] & NEEDS_CSUM != 0;
        let headers = &self.head[VNET_HDR_LEN.min(head_len)..head_len];
        let frame_len = len.saturating_sub(VNET_HDR_LEN);
        // Frame checks: a length the device and the link carry (a GSO frame: each of its
        // segments), and headers that parse when a later stage or GSO reads them (read from
        // a frame too long for the link as well, so that the audit records who sent it).
        let link_mtu = if gso.is_some() { None } else { self.mtu };
        let length = check_tx_frame(len, headers, link_mtu);
        let mut read = match length {
            Err(FrameError::TooShort(_)) => Ok(None),
            _ => read_headers(
                headers,
                frame_len,
                io.stages.reads_headers() || gso.is_some() || csum_requested,
            ),
        };
        // Checksum offload: the host is asked only for the frame's own TCP/UDP checksum; any
        // other request (not in a GSO frame) is carried out here, in the device's copy, and
        // the headers read again.
        let mut csum = match &read {
            Ok(parsed) if csum_requested => {
                check_csum_request(&self.head[..head_len], parsed.as_ref())
            }
            _ => Ok(()),
        };
        if csum.is_err() && gso.is_none() {
            let rest = self.iovs.as_slice().get(1..).unwrap_or_default();
            // SAFETY: the iovecs after the head point into guest memory that the ring keeps
            // mapped (gather_iov checked each with get_slice).
            csum = unsafe { checksum_in_device(&mut self.head[..head_len], rest, len) };
            if csum.is_ok() {
                inc(&self.counters.tx.checksums_done);
                let headers = &self.head[VNET_HDR_LEN.min(head_len)..head_len];
                read = read_headers(headers, frame_len, true);
            }
        }
        let headers = &self.head[VNET_HDR_LEN.min(head_len)..head_len];
        // Borrowed, not copied: the headers are ~100 bytes, and copies of them had cost ~20
        // instructions a frame.
        let parsed = read.as_ref().ok().and_then(Option::as_ref);
        let wire = match gso {
            None => Ok(WireSize::single(frame_len, parsed)),
            Some(gso) => {
                WireSize::segments(gso, frame_len, parsed, self.mtu).map_err(Refusal::from)
            }
        };
        let wire = csum.map_err(Refusal::from).and(wire);
        let size = wire
            .as_ref()
            .map_or_else(|_| WireSize::single(frame_len, parsed), |w| *w);
        let checked = match (length, wire) {
            (Err(e), _) => {
                log::debug!("virtio-net TX: dropping frame: {e}");
                Err(Verdict::DroppedMalformed)
            }
            (Ok(()), Err(e)) => {
                log::debug!("virtio-net TX: dropping frame: {e}");
                Err(Verdict::DroppedMalformed)
            }
            (Ok(()), Ok(_)) => read.as_ref().map(|_| ()).map_err(|dropped| *dropped),
        };
        // Anti-spoofing.
        let passed = checked.and_then(|_| io.stages.check_source(parsed));
        // TAP: a frame that passed is written; the outcome is its verdict.
        let verdict = match passed {
            Err(dropped) => dropped,
            // SAFETY: iovs[0] is `head`; the others point into guest memory that the ring
            // keeps mapped (gather_iov checked each with get_slice).
            Ok(()) => match unsafe { io.backend.write_iov(self.iovs.as_slice()) } {
                Ok(_) => {
                    io.stages.charge(&mut self.allowance, size.bytes);
                    add(&self.counters.tx.packets, size.packets);
                    add(&self.counters.tx.bytes, size.bytes);
                    if waited {
                        Verdict::Delayed
                    } else {
                        Verdict::Forwarded
                    }
                }
                // Not an outcome yet: the chain goes back in the ring, unaudited.
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Sent::Blocked,
                Err(e) => {
                    log::debug!("virtio-net TX: backend write: {e}");
                    inc(&self.counters.tx.backend_errors);
                    Verdict::DroppedBackend
                }
            },
        };
        if cleared {
            inc(&self.counters.tx.header_fields_cleared);
        }
        // Audit: what happened to the frame.
        io.stages
            .audit(Direction::Tx, headers, size, parsed, verdict);
        if !verdict.passes() {
            inc(&self.counters.tx.dropped);
        }
        Sent::Used
    }
}
