//! The daemon's allocation loop: every [`TICK`] it reads demand from the ledger, computes the
//! node-wide allocation for each direction and writes each sliver's rate back.
//!
//! Demand: a sliver whose VMM reports a backlog (frames waiting for tokens) wants as much as
//! it can get; one that sent within [`ACTIVE_WINDOW`] without a backlog wants a little more
//! than its recent rate (twice its moving average); the others are idle and are left out, so
//! their share goes to the rest at once (work-conserving). An idle sliver is still given an
//! "entry rate", so its first frames go out at once and the next tick counts it in: its
//! weighted part of the node among all slivers with a slot, busy or not. With that, idle
//! slivers together never hold more than the capacity, however many wake up at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm::ledger::{monotonic_ns, Ledger, Slot, SLOTS, UNLIMITED};

use super::alloc::{allocate, Claim};
use super::budget::{day_of, Budget};
use super::slots::unix_now;

/// How often the allocation is recomputed.
pub const TICK: Duration = Duration::from_millis(2);
/// A sliver that moved bytes this recently counts as active.
pub const ACTIVE_WINDOW: Duration = Duration::from_millis(4);
/// A backlog flag whose VMM has not visited for this long is not believed (a throttled VMM
/// visits at least every `devices::virtio::net::shaper::MAX_WAIT`, 50 ms). The supervisor
/// clears the flags at once when a VMM exits; this is for a VMM that hangs or is killed
/// outside the supervisor.
pub const HEARTBEAT_STALE: Duration = Duration::from_millis(150);
/// Time constant of the rate average behind a non-backlogged sliver's demand.
const EWMA_TAU: f64 = 0.020;
/// Demand headroom for a sliver without a backlog, bit/s on top of twice its average.
const DEMAND_FLOOR: f64 = 100_000.0;

/// The node's capacities, bit/s (`u64::MAX`: no node-wide limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRates {
    /// Egress: what all guests together may send.
    pub tx: u64,
    /// Ingress: what all guests together may receive.
    pub rx: u64,
}

#[derive(Debug, Clone, Default)]
struct Track {
    name: String,
    bytes: [u64; 2],
    last_move_ns: [u64; 2],
    ewma_bps: [f64; 2],
}

/// The allocation loop's state.
#[derive(Debug)]
pub struct Coordinator {
    ledger: Arc<Ledger>,
    node: NodeRates,
    tracks: Vec<Track>,
    last_ns: u64,
}

fn bits_to_bytes(bps: u64) -> u64 {
    if bps == u64::MAX {
        UNLIMITED
    } else {
        bps / 8
    }
}

impl Coordinator {
    /// A coordinator over `ledger` for a node with capacities `node`.
    pub fn new(ledger: Arc<Ledger>, node: NodeRates) -> Self {
        Self {
            ledger,
            node,
            tracks: vec![Track::default(); SLOTS],
            last_ns: monotonic_ns(),
        }
    }

    /// One allocation round at monotonic time `now_ns` and Unix time `unix_secs`.
    pub fn tick(&mut self, now_ns: u64, unix_secs: f64) {
        let dt = now_ns.saturating_sub(self.last_ns).max(1) as f64 / 1e9;
        self.last_ns = now_ns;
        let today = day_of(unix_secs as u64);
        let mut claims: [Vec<(usize, Claim)>; 2] = [Vec::new(), Vec::new()];
        let mut idle: [Vec<(usize, Claim)>; 2] = [Vec::new(), Vec::new()];
        for (i, slot) in self.ledger.slots() {
            if !slot.is_used() {
                continue;
            }
            roll_day(slot, today);
            let track = &mut self.tracks[i];
            if !slot.name_is(&track.name) {
                *track = Track {
                    name: slot.name(),
                    ..Track::default()
                };
            }
            let caps = [tx_cap(slot, unix_secs), u64::MAX];
            let counters = [&slot.tx_bytes, &slot.rx_bytes];
            let flags = [&slot.tx_backlog, &slot.rx_backlog];
            let fresh = now_ns.saturating_sub(slot.heartbeat_ns.load(Ordering::Relaxed))
                < HEARTBEAT_STALE.as_nanos() as u64;
            for d in 0..2 {
                let bytes = counters[d].load(Ordering::Relaxed);
                let moved = bytes.saturating_sub(track.bytes[d]);
                track.bytes[d] = bytes;
                if moved > 0 {
                    track.last_move_ns[d] = now_ns;
                }
                let sample = moved as f64 * 8.0 / dt;
                let alpha = (dt / EWMA_TAU).min(1.0);
                track.ewma_bps[d] += alpha * (sample - track.ewma_bps[d]);
                let backlogged = fresh && flags[d].load(Ordering::Relaxed) != 0;
                let active = backlogged
                    || now_ns.saturating_sub(track.last_move_ns[d])
                        < ACTIVE_WINDOW.as_nanos() as u64;
                let claim = Claim {
                    weight: slot
                        .weight
                        .load(Ordering::Relaxed)
                        .clamp(1, u64::from(u32::MAX)) as u32,
                    min: if d == 0 {
                        slot.min_bps.load(Ordering::Relaxed)
                    } else {
                        0
                    },
                    cap: caps[d],
                    demand: if backlogged {
                        u64::MAX
                    } else {
                        (track.ewma_bps[d] * 2.0 + DEMAND_FLOOR) as u64
                    },
                };
                if active {
                    claims[d].push((i, claim));
                } else {
                    idle[d].push((i, claim));
                }
            }
        }
        for d in 0..2 {
            let capacity = if d == 0 { self.node.tx } else { self.node.rx };
            self.publish(d, capacity, &claims[d], &idle[d]);
        }
        self.ledger.header().ticks.fetch_add(1, Ordering::Relaxed);
    }

    /// Allocate direction `d` and write the rates.
    fn publish(&self, d: usize, capacity: u64, active: &[(usize, Claim)], idle: &[(usize, Claim)]) {
        let list: Vec<Claim> = active.iter().map(|(_, c)| *c).collect();
        let rates = allocate(capacity, &list);
        let all_weight: u64 = active
            .iter()
            .chain(idle)
            .map(|(_, c)| u64::from(c.weight))
            .sum();
        let write = |i: usize, bps: u64| {
            if let Ok(slot) = self.ledger.slot(i) {
                let field = if d == 0 {
                    &slot.tx_alloc
                } else {
                    &slot.rx_alloc
                };
                field.store(bits_to_bytes(bps), Ordering::Relaxed);
            }
        };
        for ((i, _), rate) in active.iter().zip(rates) {
            write(*i, rate);
        }
        for (i, c) in idle {
            write(*i, entry_rate(capacity, all_weight, c));
        }
    }
}

/// An idle sliver's rate until the next tick: its weighted part of the capacity among all
/// `all_weight` (busy or not), at least its minimum, at most its cap.
fn entry_rate(capacity: u64, all_weight: u64, c: &Claim) -> u64 {
    if capacity == u64::MAX {
        return c.cap;
    }
    let w = u64::from(c.weight);
    let part = (u128::from(capacity) * u128::from(w) / u128::from(all_weight).max(1)) as u64;
    part.max(c.min).min(c.cap).min(capacity)
}

/// Start a new day's count at midnight UTC.
fn roll_day(slot: &Slot, today: u64) {
    if slot.day.load(Ordering::Relaxed) != today {
        slot.day_start_tx
            .store(slot.tx_bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        slot.day.store(today, Ordering::Relaxed);
    }
}

/// The TX cap: `net_max_rate` and the daily budget, whichever is lower.
fn tx_cap(slot: &Slot, unix_secs: f64) -> u64 {
    let max = slot.max_bps.load(Ordering::Relaxed);
    let (thresh, max_kb) = (
        slot.thresh_kbyte.load(Ordering::Relaxed),
        slot.max_kbyte.load(Ordering::Relaxed),
    );
    if thresh == UNLIMITED || max_kb == UNLIMITED {
        return max;
    }
    let sent = slot
        .tx_bytes
        .load(Ordering::Relaxed)
        .saturating_sub(slot.day_start_tx.load(Ordering::Relaxed));
    let budget = Budget {
        thresh_kbyte: thresh,
        max_kbyte: max_kb,
    };
    max.min(budget.cap(unix_secs, sent, slot.min_bps.load(Ordering::Relaxed)))
}

/// Run the allocation loop on its own thread until `stop` is set.
pub fn spawn(
    ledger: Arc<Ledger>,
    node: NodeRates,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    {
        let h = ledger.header();
        h.node_tx.store(node.tx, Ordering::Relaxed);
        h.node_rx.store(node.rx, Ordering::Relaxed);
    }
    std::thread::Builder::new()
        .name("shares".into())
        .spawn(move || {
            let mut c = Coordinator::new(ledger, node);
            while !stop.load(Ordering::Relaxed) {
                c.tick(monotonic_ns(), unix_now());
                std::thread::sleep(TICK);
            }
        })
}

#[cfg(test)]
mod tests {
    use super::super::slots::{assign, Limits};
    use super::*;

    const M: u64 = 1_000_000;

    fn limits(share: u32) -> Limits {
        Limits {
            share,
            min_rate: 0,
            max_rate: None,
            budget: None,
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        ledger: Arc<Ledger>,
        c: Coordinator,
        now: u64,
    }

    fn setup(node_tx: u64) -> Setup {
        let dir = tempfile::tempdir().expect("tmp");
        let ledger = Arc::new(Ledger::create_or_open(&dir.path().join("l")).expect("ledger"));
        let c = Coordinator::new(
            ledger.clone(),
            NodeRates {
                tx: node_tx,
                rx: 10 * M,
            },
        );
        Setup {
            _dir: dir,
            ledger,
            c,
            now: 1_000_000_000,
        }
    }

    impl Setup {
        fn backlog(&self, i: usize, on: bool) {
            let s = self.ledger.slot(i).expect("slot");
            s.tx_backlog.store(u64::from(on), Ordering::Relaxed);
            s.heartbeat_ns.store(self.now, Ordering::Relaxed);
        }
        fn tick(&mut self) {
            self.now += TICK.as_nanos() as u64;
            self.c.tick(self.now, 1.7e9);
        }
        fn alloc_bps(&self, i: usize) -> u64 {
            self.ledger
                .slot(i)
                .expect("slot")
                .tx_alloc
                .load(Ordering::Relaxed)
                .saturating_mul(8)
        }
    }

    #[test]
    fn backlogged_slivers_split_by_weight_and_idle_ones_get_their_entry_rate() {
        let mut s = setup(80 * M);
        let a = assign(&s.ledger, "a", &limits(1)).expect("a");
        let b = assign(&s.ledger, "b", &limits(3)).expect("b");
        let c = assign(&s.ledger, "c", &limits(4)).expect("c");
        s.backlog(a, true);
        s.backlog(b, true);
        s.tick();
        assert_eq!(s.alloc_bps(a), 20 * M);
        assert_eq!(s.alloc_bps(b), 60 * M);
        // c is idle: its entry rate is its weighted part among all three, 4/8.
        assert_eq!(s.alloc_bps(c), 40 * M);
        // c starts: the next tick counts it.
        s.backlog(c, true);
        s.tick();
        assert_eq!(s.alloc_bps(a), 10 * M);
        assert_eq!(s.alloc_bps(c), 40 * M);
        // b stops: its share goes to the others at once.
        s.backlog(b, false);
        s.tick();
        assert_eq!(s.alloc_bps(a), 16 * M);
        assert_eq!(s.alloc_bps(c), 64 * M);
    }

    #[test]
    fn idle_slivers_waking_together_never_hold_more_than_the_node() {
        let mut s = setup(64 * M);
        let a = assign(&s.ledger, "a", &limits(1)).expect("a");
        let b = assign(&s.ledger, "b", &limits(3)).expect("b");
        s.tick();
        assert_eq!((s.alloc_bps(a), s.alloc_bps(b)), (16 * M, 48 * M));
    }

    #[test]
    fn a_dead_vmms_backlog_flag_expires() {
        let mut s = setup(80 * M);
        let a = assign(&s.ledger, "a", &limits(1)).expect("a");
        let b = assign(&s.ledger, "b", &limits(1)).expect("b");
        s.backlog(a, true);
        s.backlog(b, true);
        s.tick();
        assert_eq!(s.alloc_bps(a), 40 * M);
        // b's VMM stops visiting; a keeps its heartbeat fresh.
        for _ in 0..100 {
            s.backlog(a, true);
            s.tick();
        }
        assert_eq!(s.alloc_bps(a), 80 * M);
    }

    #[test]
    fn a_light_sender_keeps_what_it_uses_and_frees_the_rest() {
        let mut s = setup(80 * M);
        let a = assign(&s.ledger, "a", &limits(1)).expect("a");
        let b = assign(&s.ledger, "b", &limits(1)).expect("b");
        s.backlog(b, true);
        let ledger = s.ledger.clone();
        // a sends 1 Mbit/s steadily without a backlog.
        for _ in 0..200 {
            ledger
                .slot(a)
                .expect("slot")
                .tx_bytes
                .fetch_add(1_000_000 / 8 * 2 / 1000, Ordering::Relaxed);
            s.backlog(b, true);
            s.tick();
        }
        let (ra, rb) = (s.alloc_bps(a), s.alloc_bps(b));
        assert!(
            (2 * M..=3 * M).contains(&ra),
            "a gets about twice its use: {ra}"
        );
        // The ledger holds bytes/s: each rate is rounded down to a multiple of 8 bit/s.
        assert!(ra + rb > 80 * M - 16, "the rest goes to b: {ra} + {rb}");
    }

    #[test]
    fn the_daily_budget_caps_after_the_threshold_and_resets_at_midnight() {
        let mut s = setup(80 * M);
        let lim = Limits {
            budget: Some((1_000, 2_000)), // 1 MB threshold, 2 MB a day
            ..limits(1)
        };
        let a = assign(&s.ledger, "a", &lim).expect("a");
        s.backlog(a, true);
        let noon = 20_000.0 * 86_400.0 + 43_200.0;
        s.c.tick(s.now, noon);
        assert_eq!(s.alloc_bps(a), 80 * M, "under the threshold");
        s.ledger
            .slot(a)
            .expect("slot")
            .tx_bytes
            .fetch_add(1_500_000, Ordering::Relaxed);
        s.now += 2_000_000;
        s.backlog(a, true);
        s.c.tick(s.now, noon);
        let expect = (500_000.0 * 8.0 / 43_200.0) as u64;
        assert_eq!(
            s.alloc_bps(a),
            expect / 8 * 8,
            "what is left over the rest of the day"
        );
        // Midnight: a new day, a new budget.
        s.now += 2_000_000;
        s.backlog(a, true);
        s.c.tick(s.now, 20_001.0 * 86_400.0 + 1.0);
        assert_eq!(s.alloc_bps(a), 80 * M);
    }

    #[test]
    fn patched_limits_apply_at_the_next_tick() {
        let mut s = setup(80 * M);
        let a = assign(&s.ledger, "a", &limits(1)).expect("a");
        s.backlog(a, true);
        s.tick();
        assert_eq!(s.alloc_bps(a), 80 * M);
        let capped = Limits {
            max_rate: Some(5 * M),
            ..limits(1)
        };
        assign(&s.ledger, "a", &capped).expect("patch");
        s.backlog(a, true);
        s.tick();
        assert_eq!(s.alloc_bps(a), 5 * M);
    }
}
