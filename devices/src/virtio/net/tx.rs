//! The transmit pipeline: descriptor chain → frame checks → policy → shaper → backend.
//!
//! The first [`HEAD_LEN`] bytes of each frame (virtio header and the headers the policy looks
//! at) are copied into the device; the payload goes from guest memory to the TAP by
//! `writev(2)` without a copy.

use std::io::ErrorKind;
use std::time::Instant;

use virtio_queue::{QueueOwnedT, QueueT};

use super::backend::NetBackend;
use super::chain::{gather_iov, ChainError};
use super::counters::{add, inc};
use super::device::{Active, NetDevice};
use super::frame::check_tx_frame;
use super::policy::{Verdict, HEADER_BYTES};
use super::shaper::{Admit, Direction};
use super::{FRAME_BUF_LEN, QUEUE_SIZE, TX_QUEUE, VNET_HDR_LEN};

/// Bytes of each TX frame copied into the device.
pub(super) const HEAD_LEN: usize = VNET_HDR_LEN + HEADER_BYTES;

/// What happened to one chain.
enum TxOutcome {
    /// Written to the backend.
    Sent(usize),
    /// Dropped (counted by the caller).
    Dropped,
    /// The backend would block: put the chain back and wait.
    Blocked,
}

impl<B: NetBackend> NetDevice<B> {
    /// Send everything the guest queued (bounded per call; re-kicks itself if more remain).
    pub(super) fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if self.tx_blocked || self.tx_throttled {
            return;
        }
        if Active::avail_index_invalid(&active.tx, &active.mem) {
            active.fail(
                "TX avail index moved by more than the queue size",
                &self.counters,
            );
            self.active = None;
            return;
        }
        let mut returned = 0u32;
        let mut throttled = None;
        loop {
            let Some(mut chain) = active.tx.pop_descriptor_chain(&active.mem) else {
                // Re-arm notifications; if the guest added chains meanwhile, go on.
                match active.tx.enable_notification(&active.mem) {
                    Ok(true) => continue,
                    _ => {
                        if let Some(shaper) = &self.shaper {
                            shaper.idle(Direction::Tx);
                        }
                        break;
                    }
                }
            };
            // The shaper decides before the chain is read: a throttled chain waits in the
            // ring, untouched, until the shaper timer.
            if let Some(shaper) = &self.shaper {
                let now = Instant::now();
                if let Admit::Wait(wait) = shaper.admit(Direction::Tx, now) {
                    shaper.waiting(Direction::Tx, now);
                    active.tx.go_to_previous_position();
                    throttled = Some(wait);
                    break;
                }
            }
            let head = chain.head_index();
            // Stage 1: descriptor chain.
            let gathered = gather_iov(
                &mut chain,
                &mut self.tx_head[..],
                &mut self.tx_iovs,
                FRAME_BUF_LEN,
            );
            let outcome = match gathered {
                Err(e) => {
                    log::debug!("virtio-net TX: dropping chain {head}: {e}");
                    if e != ChainError::TooLong {
                        inc(&self.counters.malformed_chains);
                    }
                    TxOutcome::Dropped
                }
                Ok(g) => {
                    let headers = &self.tx_head[VNET_HDR_LEN.min(g.head_len)..g.head_len];
                    // Stage 2: frame checks. Stage 3: policy. Stage 4: backend.
                    if let Err(e) = check_tx_frame(g.len) {
                        log::debug!("virtio-net TX: dropping frame: {e}");
                        self.policy
                            .on_tx_malformed(headers, g.len.saturating_sub(VNET_HDR_LEN));
                        TxOutcome::Dropped
                    } else if self.policy.on_tx(headers, g.len - VNET_HDR_LEN) == Verdict::Drop {
                        TxOutcome::Dropped
                    } else {
                        // SAFETY: iovs[0] is `tx_head`; the others point into guest memory that
                        // `active.mem` keeps mapped for this whole call (checked by get_slice).
                        match unsafe { self.backend.write_iov(self.tx_iovs.as_slice()) } {
                            Ok(_) => TxOutcome::Sent(g.len - VNET_HDR_LEN),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => TxOutcome::Blocked,
                            Err(e) => {
                                log::debug!("virtio-net TX: backend write: {e}");
                                TxOutcome::Dropped
                            }
                        }
                    }
                }
            };
            match outcome {
                TxOutcome::Blocked => {
                    active.tx.go_to_previous_position();
                    inc(&self.counters.tx_backend_full);
                    self.tx_blocked = true;
                    break;
                }
                TxOutcome::Sent(bytes) => {
                    if let Some(shaper) = &self.shaper {
                        shaper.charge(Direction::Tx, bytes);
                    }
                    inc(&self.counters.tx_packets);
                    add(&self.counters.tx_bytes, bytes as u64);
                }
                TxOutcome::Dropped => inc(&self.counters.tx_dropped),
            }
            if active.tx.add_used(&active.mem, head, 0).is_err() {
                active.fail("TX used ring is outside guest memory", &self.counters);
                self.active = None;
                return;
            }
            returned += 1;
            if returned >= u32::from(QUEUE_SIZE) {
                // Fairness: let RX and other devices run, then continue.
                let _ = self.queue_evts[TX_QUEUE].write(1);
                break;
            }
        }
        if returned > 0 && active.tx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        if let Some(wait) = throttled {
            inc(&self.counters.tx_throttled);
            self.policy.on_throttled(Direction::Tx);
            self.throttle(Direction::Tx, wait);
        }
    }
}
