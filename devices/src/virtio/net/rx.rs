//! The receive queue and its pipeline. [`RxQueue::receive`] takes one frame through the
//! stages, in the order it calls them: guest buffers (descriptor chains) → shaper admission →
//! TAP (the backend) → virtio header (fields of features not negotiated cleared) → frame
//! checks → guest → audit. The audit comes last so that it records what happened: a frame
//! that could not be put in the guest's buffers is not `forwarded`.
//!
//! Guest buffers are taken first, so a frame is read only when the guest has a buffer for it
//! (backpressure: with no buffer, the TAP is not read at all). A small frame is read whole
//! into a buffer of the device's own and copied into the guest's chains once it passes; a
//! large one has its first bytes read into the queue's head buffer and the rest straight
//! into the chains with `readv(2)` ([`RxRead`]). The stages read the device's copy of the
//! first bytes, which then go into the chains.
//!
//! Without VIRTIO_NET_F_MRG_RXBUF a frame goes into one chain; with it, into as many chains
//! as it needs (virtio 1.2 section 5.1.6.4), and the driver is told how many in
//! `num_buffers`. A frame read straight into the chains (a large one expected) needs them
//! first: the device takes chains until they hold the largest frame the driver may get (a
//! 64 KiB GSO frame when it took GUEST_TSO4/6) and puts back the ones the frame did not
//! reach. A frame read whole into the device's buffer (a small one expected) needs one chain
//! first and the rest once its length is known; while the guest has too few, it waits in
//! that buffer. A frame longer than the largest the driver may get, or than the ring's worth
//! of chains holds, is dropped.

use std::io::ErrorKind;
use std::sync::Arc;

use packet::{Direction, Verdict};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

use super::backend::NetBackend;
use super::chain::{rx_append, rx_begin, rx_finish, HeadSpans, IovecBuf};
use super::counters::{add, inc, NetCounters, RxCounters};
use super::frame_checks::{check_link_len, check_rx_frame, read_headers, FrameError, Refusal};
use super::gso::{Gso, WireSize};
use super::queue::{QueueIo, Stop};
use super::rx_read::RxRead;
use super::shaper::Allowance;
use super::stages::{Stages, Wait};
use super::vnet_hdr::{
    asks_unnegotiated_rx_offload, clear_unnegotiated, HeaderDirection, NUM_BUFFERS,
};
use super::{FRAME_BUF_LEN, HEAD_LEN, QUEUE_SIZE, VNET_HDR_LEN};
use crate::virtio::feature;
use crate::virtio::split_ring::{RingError, SplitRing};

/// Most iovecs one `readv(2)` takes (Linux `UIO_MAXIOV`).
const IOV_MAX: usize = 1024;

/// Where one frame's trip through the pipeline ended.
enum Received {
    /// This many chains went back to the guest (the frame, or an unusable chain).
    Used(u16),
    /// The shaper holds frames back: the chains stay in the ring.
    Wait(Wait),
    /// No frame in the backend: the chains stay in the ring.
    Empty,
    /// Not enough guest buffers: the chains stay in the ring until the guest adds more.
    NoBuffers,
    /// The guest's rings are unusable.
    Broken(RingError),
}

/// The receive queue while the driver has the device running.
pub(super) struct RxQueue {
    ring: SplitRing,
    /// Where `readv(2)` puts the first bytes of the frame being received (a frame read whole
    /// goes into the reader's buffer instead, [`RxRead`]).
    head: Box<[u8; HEAD_LEN]>,
    /// Catches the first byte of a frame longer than the guest's buffer.
    spare: [u8; 1],
    /// Where that frame goes: `head`, the guest's buffers after those bytes, `spare`.
    iovs: IovecBuf,
    /// How the frame is read into them.
    read: RxRead,
    /// The guest buffers of the frame's first bytes: those bytes, as the stages left them,
    /// are copied there last.
    spans: HeadSpans,
    /// The chains taken for the frame: head index and capacity in bytes.
    chains: Vec<(u16, u32)>,
    /// VIRTIO_NET_F_MRG_RXBUF: a frame may span chains.
    mergeable: bool,
    /// With `mergeable`: the virtio header and the largest frame the driver may get (chains
    /// are taken until they hold it before a frame is read straight into them).
    frame_room: usize,
    counters: Arc<NetCounters>,
    /// The shaper's tokens this queue holds during a batch.
    allowance: Allowance,
    /// No guest buffer: stop reading the backend until the guest kicks RX.
    pub(super) blocked: bool,
    /// Out of tokens: frames wait in the backend until the shaper timer.
    pub(super) throttled: bool,
    /// With MRG_RXBUF: a frame of this many bytes, read whole into the device's buffer, waits
    /// there for the guest's buffers.
    waiting_frame: Option<usize>,
    /// A frame waited in the TAP for the shaper: the next one delivered is recorded as
    /// delayed (the TAP does not say how many waited).
    delayed: bool,
    /// The features the driver negotiated (which virtio header fields it may see).
    acked_features: u64,
    /// The MTU the driver was told (VIRTIO_NET_F_MTU negotiated): no longer frame goes to it.
    mtu: Option<usize>,
}

impl RxQueue {
    /// The driver's RX `ring` under features `acked_features`, counting into `counters`;
    /// frames longer than `mtu` (plus the Ethernet header) are not delivered. With
    /// MRG_RXBUF, no frame longer than `frame_room` bytes is.
    pub(super) fn new(
        ring: SplitRing,
        counters: Arc<NetCounters>,
        acked_features: u64,
        (mtu, frame_room): (Option<usize>, usize),
    ) -> Self {
        Self {
            ring,
            head: Box::new([0u8; HEAD_LEN]),
            spare: [0u8; 1],
            // A merged frame may take many small chains: room for IOV_MAX iovecs.
            iovs: IovecBuf::with_capacity(IOV_MAX - 2),
            read: RxRead::new(),
            spans: IovecBuf::with_capacity(HEAD_LEN),
            chains: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            mergeable: acked_features & feature(VIRTIO_NET_F_MRG_RXBUF) != 0,
            frame_room,
            counters,
            allowance: Allowance::default(),
            blocked: false,
            throttled: false,
            waiting_frame: None,
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
        // One batch: the audit reads the clock once for it.
        io.stages.begin_batch();
        let stop = self.process_batch(io);
        io.stages.end_batch();
        io.stages.settle(Direction::Rx, &mut self.allowance);
        stop
    }

    /// The queue goes away (the device is reset): [`Stages::release`].
    pub(super) fn release(&mut self, stages: &Stages) {
        stages.release(Direction::Rx, &mut self.allowance);
    }

    fn process_batch<B: NetBackend>(&mut self, io: &mut QueueIo<'_, B>) -> Stop {
        if self.throttled {
            return Stop::Idle;
        }
        let mut returned = 0u16;
        let mut stop = Stop::Idle;
        while returned < QUEUE_SIZE {
            match self.receive(io) {
                Received::Used(chains) => returned += chains,
                Received::Wait(wait) => {
                    self.throttled = true;
                    self.delayed |= wait.frame_waits;
                    inc(&self.counters().throttled);
                    stop = Stop::Throttled(wait.after);
                    break;
                }
                Received::Empty => {
                    self.delayed = false;
                    break;
                }
                Received::NoBuffers => {
                    self.blocked = true;
                    inc(&self.counters().no_buffer);
                    break;
                }
                Received::Broken(e) => {
                    stop = Stop::Broken(e);
                    break;
                }
            }
        }
        // The batch's used chains reach the driver at once.
        if returned > 0 && self.ring.publish_used() {
            io.interrupt.signal_used_queue();
        }
        stop
    }

    /// Take guest chains for the next frame into `iovs` (one, or with MRG_RXBUF as many as
    /// hold `room` bytes) and return their capacity. A chain that cannot be used goes back to
    /// the guest alone, with nothing written.
    #[inline]
    fn take_buffers(&mut self, room: usize) -> Result<usize, Received> {
        rx_begin(&mut self.head[..], &mut self.iovs, &mut self.spans);
        self.chains.clear();
        self.add_buffers(room, 0)
    }

    /// With MRG_RXBUF: take more chains after the `capacity` bytes taken (and ended with
    /// `rx_finish`) so far, until they hold `room` bytes; returns the capacity. When the
    /// guest has too few, every chain taken goes back and the frame waits.
    #[inline(never)]
    fn more_buffers(&mut self, room: usize, capacity: usize) -> Result<usize, Received> {
        // The spare iovec goes last again.
        self.iovs.0.pop();
        self.add_buffers(room, capacity)
    }

    /// Take chains after the `capacity` bytes taken so far until they hold `room` bytes (one
    /// chain without MRG_RXBUF); end the iovecs and return the capacity.
    #[inline(always)]
    fn add_buffers(&mut self, room: usize, mut capacity: usize) -> Result<usize, Received> {
        let mut cut_short = false;
        loop {
            // At most the ring's worth of chains for one frame, whatever the guest keeps adding.
            if self.chains.len() >= usize::from(self.ring.size()) {
                break;
            }
            let index = match self.ring.pop() {
                Ok(Some(index)) => index,
                // Re-arm notifications; if the guest added chains meanwhile, go on.
                Ok(None) => match self.ring.enable_notification() {
                    Ok(true) => continue,
                    Ok(false) => break,
                    Err(e) => return Err(Received::Broken(e)),
                },
                Err(e) => return Err(Received::Broken(e)),
            };
            let marks = (self.iovs.0.len(), self.spans.0.len());
            match rx_append(
                &self.ring,
                index,
                &mut self.head[..],
                &mut self.iovs,
                &mut self.spans,
                capacity,
            ) {
                // With MRG_RXBUF every buffer holds at least a virtio header (5.1.6.3.1).
                Ok(end) if self.mergeable && end - capacity < VNET_HDR_LEN => {
                    self.iovs.0.truncate(marks.0);
                    self.spans.0.truncate(marks.1);
                    if self.chains.is_empty() {
                        log::debug!("virtio-net RX: chain {index} smaller than a virtio header");
                        inc(&self.counters().malformed_chains);
                        self.ring.add_used(index, 0);
                        return Err(Received::Used(1));
                    }
                    self.ring.unpop();
                    cut_short = true;
                    break;
                }
                Ok(end) => {
                    let room = u32::try_from(end - capacity).unwrap_or(u32::MAX);
                    self.chains.push((index, room));
                    capacity = end;
                }
                Err(e) if self.chains.is_empty() => {
                    log::debug!("virtio-net RX: unusable chain {index}: {e}");
                    inc(&self.counters().malformed_chains);
                    self.ring.add_used(index, 0);
                    return Err(Received::Used(1));
                }
                Err(_) => {
                    // The frame makes do with the chains before it; this one goes back to
                    // the guest alone next time.
                    self.iovs.0.truncate(marks.0);
                    self.spans.0.truncate(marks.1);
                    self.ring.unpop();
                    cut_short = true;
                    break;
                }
            }
            if !self.mergeable || capacity >= room {
                break;
            }
        }
        let taken = self.chains.len();
        // Too little room: wait for more buffers, unless the guest's whole ring is taken
        // already (it cannot add more).
        let short = self.mergeable && capacity < room && !cut_short;
        if taken == 0 || (short && taken < usize::from(self.ring.size())) {
            self.put_back(taken);
            return Err(Received::NoBuffers);
        }
        rx_finish(HEAD_LEN, &mut self.iovs, &mut self.spare, capacity);
        Ok(capacity)
    }

    /// The last `count` chains taken go back to the avail ring, untouched.
    fn put_back(&mut self, count: usize) {
        for _ in 0..count {
            self.ring.unpop();
        }
    }

    /// Give the first of the chains taken back to the guest with nothing written, and put
    /// the others back in the avail ring.
    fn return_empty(&mut self) -> Received {
        self.put_back(self.chains.len().saturating_sub(1));
        if let Some(&(index, _)) = self.chains.first() {
            self.ring.add_used(index, 0);
        }
        Received::Used(1)
    }

    /// One frame through the RX pipeline; the stages run in the order written here.
    fn receive<B: NetBackend>(&mut self, io: &mut QueueIo<'_, B>) -> Received {
        let (n, capacity) = match self.waiting_frame.take() {
            // A frame read earlier waits whole in the device's buffer for guest buffers: it
            // was admitted and read; the chains it needs are all that is missing.
            Some(n) => match self.take_buffers(n) {
                Ok(capacity) => (n, capacity),
                Err(received) => {
                    self.waiting_frame = Some(n);
                    return received;
                }
            },
            None => {
                // Guest buffers: none, no read. Enough for the largest frame the link may
                // bring, except with MRG_RXBUF for a frame read whole into the device's
                // buffer (a small one is expected): one chain now, the rest once its length
                // is known. A Linux driver's mergeable buffers are 1.5-4 KiB: taking 64 KiB
                // of them for every frame cost ~7 000 instructions a frame.
                let room = if self.mergeable && self.read.reads_whole_next() {
                    1
                } else {
                    self.frame_room
                };
                let capacity = match self.take_buffers(room) {
                    Ok(capacity) => capacity,
                    Err(received) => return received,
                };
                // Shaper admission.
                let backend = &*io.backend;
                if let Some(wait) = io
                    .stages
                    .admit(Direction::Rx, &mut self.allowance, || backend.readable())
                {
                    self.put_back(self.chains.len());
                    return Received::Wait(wait);
                }
                // TAP.
                // SAFETY: the iovecs point to `head`, `spare` and guest buffers that rx_append
                // checked with the ring, which keeps them mapped; guest memory overlaps
                // neither `head` nor the reader's buffer.
                let n = match unsafe { self.read.read(io.backend, &self.iovs) } {
                    Ok(n) => n,
                    Err(e) => {
                        if e.kind() == ErrorKind::WouldBlock {
                            io.stages.idle(Direction::Rx, &mut self.allowance);
                        } else {
                            log::debug!("virtio-net RX: backend read: {e}");
                        }
                        self.put_back(self.chains.len());
                        return Received::Empty;
                    }
                };
                // Guest buffers, the rest: a frame read whole into the device's buffer that
                // the chains taken cannot hold waits there until the guest has enough.
                // (One longer than the largest frame the driver may get is refused, as a frame
                // read straight into the chains would be.)
                if n > capacity
                    && self.mergeable
                    && self.read.holds_whole(n)
                    && n <= self.frame_room
                {
                    match self.more_buffers(n, capacity) {
                        Ok(capacity) => (n, capacity),
                        Err(received) => {
                            self.waiting_frame = Some(n);
                            return received;
                        }
                    }
                } else {
                    (n, capacity)
                }
            }
        };
        // A frame the device's buffer (the largest frame and a byte) could not hold whole is
        // refused whatever the guest's buffers hold.
        let length = check_rx_frame(n, capacity.min(FRAME_BUF_LEN));
        if let Err(e @ FrameError::Runt(_)) = length {
            log::debug!("virtio-net RX: dropping frame: {e}");
            inc(&self.counters.rx.dropped);
            return self.return_empty();
        }
        let used = reached(&self.chains, n);
        let frame_len = n - VNET_HDR_LEN;
        // The frame's first bytes, in the device's memory: what the stages read.
        let mut frame = self.read.frame(&mut self.head[..], n);
        // Virtio header: what the driver did not negotiate does not reach it; a frame that
        // needs such work done is not delivered at all.
        let stale = asks_unnegotiated_rx_offload(frame.head(), self.acked_features);
        if clear_unnegotiated(frame.head_mut(), self.acked_features, HeaderDirection::Rx) {
            inc(&self.counters.rx.header_fields_cleared);
        }
        let gso = Gso::of(frame.head());
        // Frame checks: the guest's buffers hold it, it fits the link (a GSO frame: each of
        // its segments), and its headers parse when a stage reads them.
        let headers = &frame.head()[VNET_HDR_LEN..];
        let checked = read_headers(
            headers,
            frame_len,
            io.stages.reads_headers() || gso.is_some(),
        );
        let parsed = checked.as_ref().ok().and_then(Option::as_ref);
        let wire = match gso {
            _ if stale => Err(Refusal::Unnegotiated),
            None => length
                .and_then(|()| check_link_len(frame_len, headers, self.mtu))
                .map(|()| WireSize::single(frame_len, parsed))
                .map_err(Refusal::from),
            Some(gso) => length.map_err(Refusal::from).and_then(|()| {
                WireSize::segments(gso, frame_len, parsed, self.mtu).map_err(Refusal::from)
            }),
        };
        let size = wire
            .as_ref()
            .map_or_else(|_| WireSize::single(frame_len, parsed), |w| *w);
        io.stages.charge(&mut self.allowance, size.bytes);
        // Into the guest's chains: how many the frame reached, and its bytes.
        let mergeable_count = u16::try_from(used).unwrap_or(u16::MAX);
        frame.head_mut()[NUM_BUFFERS..NUM_BUFFERS + 2]
            .copy_from_slice(&mergeable_count.to_le_bytes());
        let verdict = match (wire, checked.as_ref()) {
            (Err(e), _) => {
                log::debug!("virtio-net RX: dropping frame: {e}");
                Verdict::DroppedMalformed
            }
            (Ok(_), Err(dropped)) => *dropped,
            // SAFETY: the spans and iovecs are the chains' as rx_append mapped them for this
            // frame (the ring keeps them mapped), and hold it whole (`length` passed).
            (Ok(_), Ok(_)) => match unsafe { frame.deliver(&self.ring, &self.spans, &self.iovs) } {
                Ok(()) if std::mem::take(&mut self.delayed) => Verdict::Delayed,
                Ok(()) => Verdict::Forwarded,
                Err(e) => {
                    // Cannot happen for chains rx_append accepted.
                    log::debug!("virtio-net RX: writing frame head: {e}");
                    Verdict::DroppedMalformed
                }
            },
        };
        // Audit: what happened to the frame.
        let headers = &frame.head()[VNET_HDR_LEN..];
        io.stages
            .audit(Direction::Rx, headers, size, parsed, verdict);
        if !verdict.passes() {
            inc(&self.counters.rx.dropped);
            return self.return_empty();
        }
        self.put_back(self.chains.len() - used);
        let mut left = n;
        for &(index, room) in &self.chains[..used] {
            let len = left.min(usize::try_from(room).unwrap_or(usize::MAX));
            left -= len;
            let len = u32::try_from(len).unwrap_or(u32::MAX);
            self.ring.add_used(index, len);
        }
        add(&self.counters.rx.packets, size.packets);
        add(&self.counters.rx.bytes, size.bytes);
        Received::Used(mergeable_count)
    }
}

impl Drop for RxQueue {
    /// A frame waiting in the device's buffer when the driver resets the device is lost:
    /// counted as dropped.
    fn drop(&mut self) {
        if self.waiting_frame.is_some() {
            inc(&self.counters.rx.dropped);
        }
    }
}

/// How many of `chains` (head index and room in bytes, in order) an `n`-byte frame reaches
/// (at least one).
fn reached(chains: &[(u16, u32)], n: usize) -> usize {
    let mut left = n;
    let mut used = 0usize;
    for &(_, room) in chains {
        used += 1;
        left = left.saturating_sub(usize::try_from(room).unwrap_or(usize::MAX));
        if left == 0 {
            break;
        }
    }
    used.max(1)
}
