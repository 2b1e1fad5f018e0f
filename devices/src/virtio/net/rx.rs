//! The receive pipeline: backend → policy → descriptor chain.

use std::io::ErrorKind;

use virtio_queue::QueueT;

use super::backend::NetBackend;
use super::chain::{scatter, ChainError};
use super::counters::{add, inc};
use super::device::{Active, NetDevice};
use super::policy::{Verdict, HEADER_BYTES};
use super::{QUEUE_SIZE, VNET_HDR_LEN};

/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

impl<B: NetBackend> NetDevice<B> {
    /// Deliver backend frames while the guest has buffers (bounded per call).
    pub(super) fn process_rx(&mut self) {
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
        while returned < u32::from(QUEUE_SIZE) {
            // Stage 1: a frame from the backend (or the one still waiting).
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        log::debug!("virtio-net RX: backend read: {e}");
                        break;
                    }
                },
            };
            if len < VNET_HDR_LEN {
                inc(&self.counters.rx_dropped);
                continue;
            }
            // Stage 2: policy.
            let headers = &self.rx_buf[VNET_HDR_LEN..len.min(VNET_HDR_LEN + HEADER_BYTES)];
            if self.policy.on_rx(headers, len - VNET_HDR_LEN) == Verdict::Drop {
                inc(&self.counters.rx_dropped);
                continue;
            }
            // Stage 3: a guest buffer.
            let Some(mut chain) = active.rx.pop_descriptor_chain(&active.mem) else {
                if let Ok(true) = active.rx.enable_notification(&active.mem) {
                    self.rx_pending = Some(len);
                    continue;
                }
                self.rx_pending = Some(len);
                self.rx_blocked = true;
                inc(&self.counters.rx_no_buffer);
                break;
            };
            let head = chain.head_index();
            self.rx_buf[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
                .copy_from_slice(&1u16.to_le_bytes());
            let used_len = match scatter(&mut chain, &self.rx_buf[..len]) {
                Ok(()) => {
                    inc(&self.counters.rx_packets);
                    add(&self.counters.rx_bytes, (len - VNET_HDR_LEN) as u64);
                    len as u32
                }
                Err(e) => {
                    log::debug!("virtio-net RX: dropping frame, chain {head}: {e}");
                    if e != ChainError::TooSmall {
                        inc(&self.counters.malformed_chains);
                    }
                    inc(&self.counters.rx_dropped);
                    0
                }
            };
            if active.rx.add_used(&active.mem, head, used_len).is_err() {
                active.fail("RX used ring is outside guest memory", &self.counters);
                self.active = None;
                return;
            }
            returned += 1;
        }
        if returned > 0 && active.rx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }
}
