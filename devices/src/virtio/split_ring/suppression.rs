//! Notification suppression (virtio 1.2 sections 2.7.7 and 2.7.10): when the driver wants a
//! used buffer notification, and asking it for an available buffer notification again.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;

use super::{RingError, SplitRing, AVAIL_ENTRY_LEN, IDX, RING_HEADER_LEN, USED_ENTRY_LEN};

impl SplitRing {
    /// Offset of `used_event` in the available ring.
    fn used_event_offset(&self) -> usize {
        RING_HEADER_LEN + usize::from(self.size) * AVAIL_ENTRY_LEN
    }

    /// Offset of `avail_event` in the used ring.
    fn avail_event_offset(&self) -> usize {
        RING_HEADER_LEN + usize::from(self.size) * USED_ENTRY_LEN
    }

    /// Show the driver the used entries added since the last call (one Release store of the
    /// used index), and say whether it wants a used buffer notification for them. With
    /// VIRTIO_F_EVENT_IDX: when `used_event` lies among them (`vring_need_event` in Linux's
    /// `virtio_ring.h`); without it: unless the driver set VRING_AVAIL_F_NO_INTERRUPT.
    pub fn publish_used(&mut self) -> bool {
        let old = self.published_used;
        let new = self.next_used;
        if new == old {
            return false;
        }
        self.used_ring.store_u16(IDX, new.0, Ordering::Release);
        self.published_used = new;
        // The driver's suppression fields are read after the index is visible to it.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let used_event = Wrapping(
                self.avail_ring
                    .load_u16(self.used_event_offset(), Ordering::Relaxed),
            );
            new - used_event - Wrapping(1) < new - old
        } else {
            self.avail_ring.load_u16(0, Ordering::Relaxed) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
        }
    }

    /// Ask the driver to notify the device when it makes more buffers available (with
    /// VIRTIO_F_EVENT_IDX: `avail_event` is the next entry; without it: `flags` 0), then
    /// look again: returns whether buffers became available meanwhile.
    ///
    /// # Errors
    /// [`RingError::AvailIndexJump`].
    pub fn enable_notification(&mut self) -> Result<bool, RingError> {
        if self.event_idx {
            let at = self.avail_event_offset();
            self.used_ring
                .store_u16(at, self.next_avail.0, Ordering::Relaxed);
        } else {
            self.used_ring.store_u16(0, 0, Ordering::Relaxed);
        }
        // The driver's available index is read after it can see the request.
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx()?;
        Ok(self.avail_idx != self.next_avail)
    }
}
