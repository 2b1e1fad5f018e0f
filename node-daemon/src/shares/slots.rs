//! The daemon's bookkeeping of ledger slots: which sliver has which slot, its limits, and
//! what the API shows about it.

use std::sync::atomic::Ordering;

use serde::Serialize;
use vmm::ledger::{Ledger, LedgerError, Slot, SLOTS, UNLIMITED};

use super::budget::day_of;

/// A sliver's limits as the allocator needs them (PlanetLab's names; rates in bit/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `net_share`.
    pub share: u32,
    /// `net_min_rate`.
    pub min_rate: u64,
    /// `net_max_rate`.
    pub max_rate: Option<u64>,
    /// `net_thresh_kbyte` and `net_max_kbyte`, when both are set.
    pub budget: Option<(u64, u64)>,
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The slot of sliver `name`, if it has one.
pub fn find(ledger: &Ledger, name: &str) -> Option<usize> {
    ledger
        .slots()
        .find(|(_, s)| s.is_used() && s.name_is(name))
        .map(|(i, _)| i)
}

/// Give `name` a slot (its old one if it has one) with `limits`; returns the slot index.
pub fn assign(ledger: &Ledger, name: &str, limits: &Limits) -> Result<usize, LedgerError> {
    let index = match find(ledger, name) {
        Some(i) => i,
        None => {
            let (i, slot) = ledger
                .slots()
                .find(|(_, s)| !s.is_used())
                .ok_or(LedgerError::Slot(SLOTS))?;
            set_limits(slot, limits);
            slot.claim(name, day_of(unix_now() as u64));
            i
        }
    };
    set_limits(ledger.slot(index)?, limits);
    Ok(index)
}

/// Give sliver `name`'s slot back, if it has one.
pub fn release(ledger: &Ledger, name: &str) {
    if let Some(i) = find(ledger, name) {
        if let Ok(slot) = ledger.slot(i) {
            slot.release();
        }
    }
}

/// Write `limits` into `slot` (takes effect at the next allocation tick).
pub fn set_limits(slot: &Slot, limits: &Limits) {
    let (thresh, max_kb) = limits.budget.unwrap_or((UNLIMITED, UNLIMITED));
    slot.weight
        .store(u64::from(limits.share.max(1)), Ordering::Relaxed);
    slot.min_bps.store(limits.min_rate, Ordering::Relaxed);
    slot.max_bps
        .store(limits.max_rate.unwrap_or(UNLIMITED), Ordering::Relaxed);
    slot.thresh_kbyte.store(thresh, Ordering::Relaxed);
    slot.max_kbyte.store(max_kb, Ordering::Relaxed);
}

/// The VMM of a slot is gone: its backlog flags mean nothing any more.
pub fn vmm_gone(ledger: &Ledger, name: &str) {
    if let Some(slot) = find(ledger, name).and_then(|i| ledger.slot(i).ok()) {
        slot.tx_backlog.store(0, Ordering::Relaxed);
        slot.rx_backlog.store(0, Ordering::Relaxed);
    }
}

/// What `GET /slivers/{name}` and `/metrics` show about a sliver's shaping.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Shaping {
    /// Its ledger slot.
    pub slot: usize,
    /// Allocated TX rate now, bit/s (`null`: unlimited).
    pub tx_allocated_bps: Option<u64>,
    /// Allocated RX rate now, bit/s (`null`: unlimited).
    pub rx_allocated_bps: Option<u64>,
    /// Bytes sent since midnight UTC.
    pub tx_bytes_today: u64,
    /// Bytes sent, all time.
    pub tx_bytes: u64,
    /// Bytes received, all time.
    pub rx_bytes: u64,
    /// Milliseconds TX waited for tokens.
    pub tx_throttled_ms: u64,
    /// Milliseconds RX waited for tokens.
    pub rx_throttled_ms: u64,
}

/// Read slot `index`.
pub fn snapshot(ledger: &Ledger, index: usize) -> Option<Shaping> {
    let s = ledger.slot(index).ok()?;
    let bps = |a: &std::sync::atomic::AtomicU64| match a.load(Ordering::Relaxed) {
        UNLIMITED => None,
        r => Some(r.saturating_mul(8)),
    };
    let tx_bytes = s.tx_bytes.load(Ordering::Relaxed);
    let today = if s.day.load(Ordering::Relaxed) == day_of(unix_now() as u64) {
        tx_bytes.saturating_sub(s.day_start_tx.load(Ordering::Relaxed))
    } else {
        0 // the coordinator has not rolled the day over yet: nothing sent today
    };
    Some(Shaping {
        slot: index,
        tx_allocated_bps: bps(&s.tx_alloc),
        rx_allocated_bps: bps(&s.rx_alloc),
        tx_bytes_today: today,
        tx_bytes,
        rx_bytes: s.rx_bytes.load(Ordering::Relaxed),
        tx_throttled_ms: s.tx_throttled_ns.load(Ordering::Relaxed) / 1_000_000,
        rx_throttled_ms: s.rx_throttled_ns.load(Ordering::Relaxed) / 1_000_000,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_reuses_a_slivers_slot_and_release_frees_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let l = Ledger::create_or_open(&dir.path().join("l")).expect("ledger");
        let lim = Limits {
            share: 3,
            min_rate: 1000,
            max_rate: Some(5000),
            budget: Some((10, 20)),
        };
        let a = assign(&l, "a", &lim).expect("a");
        let b = assign(&l, "b", &lim).expect("b");
        assert_ne!(a, b);
        assert_eq!(assign(&l, "a", &lim).expect("again"), a);
        let s = l.slot(a).expect("slot");
        assert_eq!(s.weight.load(Ordering::Relaxed), 3);
        assert_eq!(s.max_bps.load(Ordering::Relaxed), 5000);
        assert_eq!(s.max_kbyte.load(Ordering::Relaxed), 20);
        release(&l, "a");
        assert_eq!(find(&l, "a"), None);
        assert_eq!(assign(&l, "c", &lim).expect("c"), a, "freed slot reused");
        let snap = snapshot(&l, b).expect("snapshot");
        assert_eq!(snap.tx_allocated_bps, None);
        assert_eq!(snap.tx_bytes_today, 0);
    }

    #[test]
    fn a_full_ledger_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let l = Ledger::create_or_open(&dir.path().join("l")).expect("ledger");
        let lim = Limits {
            share: 1,
            min_rate: 0,
            max_rate: None,
            budget: None,
        };
        for i in 0..SLOTS {
            assign(&l, &format!("s{i}"), &lim).expect("slot");
        }
        assert!(assign(&l, "one-too-many", &lim).is_err());
    }
}
