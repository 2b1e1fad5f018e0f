//! The VMM's side of the ledger: its slot as the shaper stage's [`RateSource`].
// Casts on the packet path and in shared memory must not truncate or wrap silently.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use devices::virtio::net::RateSource;
use packet::Direction;

use crate::ledger::{monotonic_ns, Ledger, LedgerError, Slot, UNLIMITED};

/// Slot `index` of a mapped ledger.
#[derive(Debug)]
pub struct SlotRate {
    ledger: Arc<Ledger>,
    index: usize,
}

impl SlotRate {
    /// Use slot `index` of `ledger`; the daemon must have given it to a sliver.
    pub fn new(ledger: Arc<Ledger>, index: usize) -> Result<Self, LedgerError> {
        let slot = ledger.slot(index)?;
        if !slot.is_used() {
            return Err(LedgerError::Format {
                path: ledger.path().to_owned(),
                why: format!("slot {index} belongs to no sliver"),
            });
        }
        Ok(Self { ledger, index })
    }

    fn slot(&self) -> &Slot {
        // The index was checked in `new`, and slots never move.
        match self.ledger.slot(self.index) {
            Ok(s) => s,
            Err(_) => unreachable!("slot index checked at construction"),
        }
    }
}

impl Drop for SlotRate {
    /// A VMM that ends (or drops its NICs) has no frames waiting any more.
    fn drop(&mut self) {
        let slot = self.slot();
        slot.tx_backlog.store(0, Ordering::Relaxed);
        slot.rx_backlog.store(0, Ordering::Relaxed);
    }
}

impl RateSource for SlotRate {
    fn rate(&self, dir: Direction) -> Option<u64> {
        let slot = self.slot();
        let alloc = match dir {
            Direction::Tx => &slot.tx_alloc,
            Direction::Rx => &slot.rx_alloc,
        };
        match alloc.load(Ordering::Relaxed) {
            UNLIMITED => None,
            r => Some(r),
        }
    }

    fn account(&self, dir: Direction, bytes: u64) {
        let slot = self.slot();
        match dir {
            Direction::Tx => slot.tx_bytes.fetch_add(bytes, Ordering::Relaxed),
            Direction::Rx => slot.rx_bytes.fetch_add(bytes, Ordering::Relaxed),
        };
    }

    fn set_backlogged(&self, dir: Direction, backlogged: bool) {
        let slot = self.slot();
        // A backlog flag is only believed while the VMM keeps repeating it (it may die
        // holding it): each repetition renews the heartbeat.
        if backlogged {
            slot.heartbeat_ns.store(monotonic_ns(), Ordering::Relaxed);
        }
        let flag = match dir {
            Direction::Tx => &slot.tx_backlog,
            Direction::Rx => &slot.rx_backlog,
        };
        flag.store(u64::from(backlogged), Ordering::Relaxed);
    }

    fn add_throttled(&self, dir: Direction, ns: u64) {
        let slot = self.slot();
        match dir {
            Direction::Tx => slot.tx_throttled_ns.fetch_add(ns, Ordering::Relaxed),
            Direction::Rx => slot.rx_throttled_ns.fetch_add(ns, Ordering::Relaxed),
        };
    }
}
