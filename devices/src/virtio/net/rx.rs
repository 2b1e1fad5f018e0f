//! The receive pipeline: guest buffer → backend → policy → guest.
//!
//! A guest RX chain is taken first, so a frame is read only when there is room for it
//! (backpressure: with no buffer, the TAP is not read at all). `readv(2)` puts the frame's
//! first bytes into the device's own buffer — what the policy inspects — and the rest straight
//! into guest memory; the first bytes are then copied into the chain.

use std::io::ErrorKind;
use std::time::Instant;

use virtio_queue::{QueueOwnedT, QueueT};

use super::backend::NetBackend;
use super::chain::{rx_iovs, scatter, ChainError};
use super::counters::NetCounters;
use super::counters::{add, inc};
use super::device::{Active, NetDevice};
use super::policy::{PacketPolicy, Verdict};
use super::shaper::{Admit, Direction};
use super::tx::HEAD_LEN;
use super::{QUEUE_SIZE, VNET_HDR_LEN};

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

impl<B: NetBackend> NetDevice<B> {
    /// Deliver backend frames while the guest has buffers (bounded per call).
    pub(super) fn process_rx(&mut self) {
        if self.rx_throttled {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if Active::avail_index_invalid(&active.rx, &active.mem) {
            active.fail(
                "RX avail index moved by more than the queue size",
                &self.counters,
            );
            self.active = None;
            return;
        }
        let mut returned = 0u32;
        let mut throttled = None;
        while returned < u32::from(QUEUE_SIZE) {
            // Stage 1: a guest buffer.
            let Some(chain) = active.rx.pop_descriptor_chain(&active.mem) else {
                if let Ok(true) = active.rx.enable_notification(&active.mem) {
                    continue;
                }
                self.rx_blocked = true;
                inc(&self.counters.rx_no_buffer);
                break;
            };
            // The shaper decides before the backend is read: a throttled frame waits there.
            if let Some(shaper) = &self.shaper {
                let now = Instant::now();
                if let Admit::Wait(wait) = shaper.admit(Direction::Rx, now) {
                    if self.backend.readable() {
                        shaper.waiting(Direction::Rx, now);
                    }
                    active.rx.go_to_previous_position();
                    throttled = Some(wait);
                    break;
                }
            }
            let head_index = chain.head_index();
            let mut walk = chain.clone();
            let used_len = match rx_iovs(
                &mut walk,
                &mut self.rx_head[..],
                &mut self.rx_spare,
                &mut self.rx_iovs,
            ) {
                Err(e) => {
                    // The chain is unusable; the frame stays in the backend for the next one.
                    log::debug!("virtio-net RX: unusable chain {head_index}: {e}");
                    inc(&self.counters.malformed_chains);
                    0
                }
                Ok(capacity) => {
                    // Stage 2: a frame from the backend.
                    // SAFETY: iovs point to `rx_head`, `rx_spare` and guest buffers that
                    // get_slice checked and `active.mem` keeps mapped for this whole call.
                    let n = match unsafe { self.backend.read_iov(self.rx_iovs.as_slice()) } {
                        Ok(n) => n,
                        Err(e) => {
                            if e.kind() != ErrorKind::WouldBlock {
                                log::debug!("virtio-net RX: backend read: {e}");
                            } else if let Some(shaper) = &self.shaper {
                                shaper.idle(Direction::Rx);
                            }
                            active.rx.go_to_previous_position();
                            break;
                        }
                    };
                    if let Some(shaper) = &self.shaper {
                        shaper.charge(Direction::Rx, n.saturating_sub(VNET_HDR_LEN));
                    }
                    deliver(
                        self.policy.as_mut(),
                        &self.counters,
                        &mut self.rx_head[..],
                        chain,
                        n,
                        capacity,
                    )
                }
            };
            if active
                .rx
                .add_used(&active.mem, head_index, used_len)
                .is_err()
            {
                active.fail("RX used ring is outside guest memory", &self.counters);
                self.active = None;
                return;
            }
            returned += 1;
        }
        if returned > 0 && active.rx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        if let Some(wait) = throttled {
            super::counters::inc(&self.counters.rx_throttled);
            self.policy.on_throttled(Direction::Rx);
            self.throttle(Direction::Rx, wait);
        }
    }
}

/// Stages 3 and 4 for a frame of `n` bytes read into a chain of `capacity` bytes: policy,
/// then the device's copy of the first bytes into the chain. Returns the used length.
fn deliver<M>(
    policy: &mut dyn PacketPolicy,
    counters: &NetCounters,
    head: &mut [u8],
    mut chain: virtio_queue::DescriptorChain<M>,
    n: usize,
    capacity: usize,
) -> u32
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemoryBackend,
{
    if n < VNET_HDR_LEN || n > capacity {
        // Runt, or longer than the guest's buffer (it reached the spare byte).
        inc(&counters.rx_dropped);
        return 0;
    }
    let head_len = n.min(HEAD_LEN);
    if policy.on_rx(&head[VNET_HDR_LEN..head_len], n - VNET_HDR_LEN) == Verdict::Drop {
        inc(&counters.rx_dropped);
        return 0;
    }
    head[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&1u16.to_le_bytes());
    match scatter(&mut chain, &head[..head_len]) {
        Ok(()) => {
            inc(&counters.rx_packets);
            add(&counters.rx_bytes, (n - VNET_HDR_LEN) as u64);
            n as u32
        }
        Err(e) => {
            // Cannot happen for a chain rx_iovs accepted, short of the guest rewriting
            // its descriptors meanwhile; then the frame is lost, the device goes on.
            log::debug!("virtio-net RX: writing frame head: {e}");
            if e != ChainError::TooSmall {
                inc(&counters.malformed_chains);
            }
            inc(&counters.rx_dropped);
            0
        }
    }
}
