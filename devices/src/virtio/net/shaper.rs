//! The shaper stage of the packet path: a deficit token bucket per direction whose rate comes
//! from outside (the node daemon's share allocation, through the VMM's ledger slot: see
//! `node_daemon::shares` and `vmm::slot_rate`).
//!
//! Throttling is backpressure: when the bucket is empty the device stops taking TX chains
//! (they wait in the guest's ring) and stops reading the backend for RX (frames wait in the
//! TAP), and arms a timer for when the bucket will hold [`WAKE_QUANTUM`] worth of tokens.
//! A frame is admitted while the bucket is not negative and then charged in full, so the
//! bucket can go one frame into debt: the rate holds over time for any frame size, and
//! nothing is split or dropped.
//!
//! Each queue keeps an [`Allowance`]: tokens taken from its direction's bucket in one go,
//! spent frame by frame without a lock or a clock read, and handed back (what is left, or
//! the debt) with the bytes to account when the queue's batch ends ([`Shaper::settle`]).
//! The bucket is locked and the clock read when a batch starts or its allowance runs out,
//! not for every frame: per frame, admission and charging had cost ~260 user-space
//! instructions and 90-180 ns (`net_path tx-shaped` against `tx-device`, issue 16's eighth
//! part).
//!
//! This assumes the queues sharing a shaper run their batches one at a time, as a VMM's
//! NICs do on its one device event loop: then at most one allowance per direction holds
//! tokens, and the bucket behaves as if charged frame by frame. Queues on several threads
//! would each take a whole burst in turn, and one finding the bucket emptied by another
//! would get one frame and then wait.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use packet::Direction;

use super::saturating_nanos;

/// Where the allocated rate comes from and where the shaper reports what it did. Shared by
/// every NIC of one sliver; called on the packet path, so lock-free and non-blocking.
pub trait RateSource: Send + Sync {
    /// The rate this sliver may use now, in bytes per second; `None` means unlimited.
    fn rate(&self, dir: Direction) -> Option<u64>;
    /// `bytes` of frames went through.
    fn account(&self, dir: Direction, bytes: u64);
    /// Whether frames are waiting for tokens (the demand signal for the allocator). While
    /// frames wait this is repeated at every wait (at least every [`MAX_WAIT`]), so the source
    /// can tell a live backlog from one whose VMM died.
    fn set_backlogged(&self, dir: Direction, backlogged: bool);
    /// Time spent throttled (frames waiting) grew by `ns`.
    fn add_throttled(&self, dir: Direction, ns: u64);
}

/// How long a burst the bucket may save up: this much time at the current rate.
pub const BURST_TIME: Duration = Duration::from_millis(5);
/// Smallest burst, so one maximum-size frame always fits.
pub const MIN_BURST_BYTES: f64 = 2.0 * 1514.0;
/// A throttled device wakes when the bucket holds this much time of tokens: at most about
/// 1000 timer wake-ups per second however fast the rate, so waiting costs next to no CPU.
pub const WAKE_QUANTUM: Duration = Duration::from_millis(1);
/// Longest single wait, so a raised rate (or a PATCH) is noticed within this time; at low
/// rates a throttled device wakes at most this often (20 times a second).
pub const MAX_WAIT: Duration = Duration::from_millis(50);

/// The shaper's answer for the next frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Send it (and charge its size to the allowance afterwards: [`Allowance::charge`]).
    Go,
    /// Wait this long, then ask again.
    Wait(Duration),
}

#[derive(Debug)]
struct Bucket {
    /// Bytes that may be sent now; negative is debt.
    tokens: f64,
    last: Instant,
    throttled_since: Option<Instant>,
    /// Queues with a frame waiting for tokens ([`Shaper::waiting`] until [`Shaper::idle`]):
    /// the direction is backlogged while any is.
    waiters: usize,
}

impl Bucket {
    fn new(now: Instant) -> Self {
        Self {
            tokens: MIN_BURST_BYTES,
            last: now,
            throttled_since: None,
            waiters: 0,
        }
    }

    fn burst(rate: f64) -> f64 {
        (rate * BURST_TIME.as_secs_f64()).max(MIN_BURST_BYTES)
    }

    fn refill(&mut self, rate: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + rate * dt).min(Self::burst(rate));
    }

    /// How long until the bucket holds a wake quantum.
    fn wait(&self, rate: f64) -> Duration {
        if rate <= 0.0 {
            return MAX_WAIT;
        }
        let target = (rate * WAKE_QUANTUM.as_secs_f64()).min(Self::burst(rate));
        let secs = (target - self.tokens) / rate;
        Duration::from_secs_f64(secs.max(0.0)).min(MAX_WAIT)
    }
}

/// A queue's part of the shaper: the tokens it took from its direction's bucket and the
/// bytes it sent on them (see the module's docs; empty between batches), and whether a frame
/// of it waits for tokens (until [`Shaper::idle`]).
#[derive(Debug, Default)]
pub struct Allowance {
    /// Bytes the queue may still send (negative: the debt of its last frame; infinite
    /// while the rate is unlimited).
    tokens: f64,
    /// `tokens` came from the bucket since the allowance was last settled.
    granted: bool,
    /// Bytes charged since then, for [`RateSource::account`].
    bytes: u64,
    /// The queue has a frame waiting for tokens (counted in its bucket's `waiters`).
    waits: bool,
}

impl Allowance {
    /// `bytes` went out on this allowance (a frame, or a GSO frame's segments as they go on
    /// the wire).
    #[inline]
    pub fn charge(&mut self, bytes: u64) {
        self.tokens -= bytes as f64;
        self.bytes += bytes;
    }
}

/// The token buckets of one sliver (both directions), shared by its NICs.
pub struct Shaper {
    source: Box<dyn RateSource>,
    buckets: Mutex<[Bucket; 2]>,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shaper").finish_non_exhaustive()
    }
}

impl Shaper {
    /// A shaper taking its rates from `source`.
    pub fn new(source: Box<dyn RateSource>) -> Self {
        let now = Instant::now();
        Self {
            source,
            buckets: Mutex::new([Bucket::new(now), Bucket::new(now)]),
        }
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, [Bucket; 2]> {
        // A panic while holding this lock cannot leave a bucket inconsistent (plain numbers).
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// May a frame go in direction `dir`, spending `allowance` (its queue's)? From the
    /// allowance while it holds tokens; otherwise the allowance is settled and the bucket,
    /// refilled up to `now()` (called only then), gives it all its tokens, or says how long
    /// to wait. After a [`Admit::Wait`] with a frame left waiting, call [`Shaper::waiting`];
    /// after [`Admit::Go`], charge the frame to the allowance ([`Allowance::charge`]).
    /// A changed rate takes effect when the allowance is next refilled (at the latest, the
    /// queue's next batch).
    #[inline]
    pub fn admit(
        &self,
        dir: Direction,
        allowance: &mut Allowance,
        now: impl FnOnce() -> Instant,
    ) -> Admit {
        if allowance.granted && allowance.tokens >= 0.0 {
            return Admit::Go;
        }
        self.refill(dir, allowance, now())
    }

    /// The slow half of [`Shaper::admit`]: settle `allowance`, then grant it the bucket's
    /// tokens (unlimited: as many as it likes until it is settled).
    fn refill(&self, dir: Direction, allowance: &mut Allowance, now: Instant) -> Admit {
        self.settle(dir, allowance);
        let Some(rate) = self.source.rate(dir) else {
            allowance.tokens = f64::INFINITY;
            allowance.granted = true;
            return Admit::Go;
        };
        let rate = rate as f64;
        let mut buckets = self.buckets();
        let b = &mut buckets[dir.index()];
        b.refill(rate, now);
        if b.tokens >= 0.0 {
            if let Some(since) = b.throttled_since.take() {
                self.source
                    .add_throttled(dir, saturating_nanos(now.saturating_duration_since(since)));
            }
            allowance.tokens = b.tokens;
            allowance.granted = true;
            b.tokens = 0.0;
            return Admit::Go;
        }
        Admit::Wait(b.wait(rate))
    }

    /// Hand `allowance` back to direction `dir`'s bucket: its tokens left (or its debt) go
    /// back, and the bytes charged to it are accounted to the rate source. A queue calls
    /// this when its batch ends; the allowance is then empty.
    pub fn settle(&self, dir: Direction, allowance: &mut Allowance) {
        // Emptied; whether the queue's frame waits is not the batch's, and stays.
        let tokens = std::mem::take(&mut allowance.tokens);
        let bytes = std::mem::take(&mut allowance.bytes);
        allowance.granted = false;
        if bytes > 0 {
            self.source.account(dir, bytes);
        }
        if tokens.is_finite() {
            if tokens != 0.0 {
                self.buckets()[dir.index()].tokens += tokens;
            }
        } else if bytes > 0 && self.source.rate(dir).is_some() {
            // An unlimited allowance takes nothing from the bucket and gives nothing back,
            // but a rate set during its batch is owed what the batch sent.
            self.buckets()[dir.index()].tokens -= bytes as f64;
        }
    }

    /// A frame of the queue whose allowance is `allowance` waits to go `dir` for tokens since
    /// `now` (the allocator's demand signal: the direction is backlogged until every queue
    /// that waited is [`Shaper::idle`]).
    pub fn waiting(&self, dir: Direction, allowance: &mut Allowance, now: Instant) {
        let mut buckets = self.buckets();
        let b = &mut buckets[dir.index()];
        if !allowance.waits {
            allowance.waits = true;
            b.waiters += 1;
        }
        if b.throttled_since.is_none() {
            b.throttled_since = Some(now);
        }
        self.source.set_backlogged(dir, true);
    }

    /// Nothing of the queue whose allowance is `allowance` waits to go `dir` any more (its
    /// ring or its backend is empty, or it is reset). The direction stops being backlogged
    /// when no other queue's frame waits; a queue that had nothing waiting changes nothing
    /// (and takes no lock).
    pub fn idle(&self, dir: Direction, allowance: &mut Allowance) {
        if !std::mem::take(&mut allowance.waits) {
            return;
        }
        let mut buckets = self.buckets();
        let b = &mut buckets[dir.index()];
        b.waiters = b.waiters.saturating_sub(1);
        if b.waiters > 0 {
            return;
        }
        self.source.set_backlogged(dir, false);
        if let Some(since) = b.throttled_since.take() {
            self.source.add_throttled(
                dir,
                saturating_nanos(Instant::now().saturating_duration_since(since)),
            );
        }
    }
}

/// A fixed rate per direction, for tests and benchmarks (`test-utils`).
#[cfg(any(test, feature = "test-utils"))]
#[derive(Debug, Default)]
pub struct FixedRate {
    /// Bytes per second per direction (`None`: unlimited).
    pub rates: [Option<u64>; 2],
    /// Bytes accounted per direction.
    pub bytes: [std::sync::atomic::AtomicU64; 2],
    /// Whether frames are waiting, per direction.
    pub backlogged: [std::sync::atomic::AtomicBool; 2],
    /// Nanoseconds throttled per direction.
    pub throttled_ns: [std::sync::atomic::AtomicU64; 2],
}

#[cfg(any(test, feature = "test-utils"))]
impl RateSource for std::sync::Arc<FixedRate> {
    fn rate(&self, dir: Direction) -> Option<u64> {
        self.rates[dir.index()]
    }
    fn account(&self, dir: Direction, bytes: u64) {
        self.bytes[dir.index()].fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    fn set_backlogged(&self, dir: Direction, backlogged: bool) {
        self.backlogged[dir.index()].store(backlogged, std::sync::atomic::Ordering::Relaxed);
    }
    fn add_throttled(&self, dir: Direction, ns: u64) {
        self.throttled_ns[dir.index()].fetch_add(ns, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;

    /// Unlimited until `limited` is set, then 1 000 B/s.
    #[derive(Default)]
    struct SwitchedRate {
        limited: std::sync::atomic::AtomicBool,
    }

    impl RateSource for Arc<SwitchedRate> {
        fn rate(&self, _dir: Direction) -> Option<u64> {
            self.limited.load(Ordering::Relaxed).then_some(1000)
        }
        fn account(&self, _dir: Direction, _bytes: u64) {}
        fn set_backlogged(&self, _dir: Direction, _backlogged: bool) {}
        fn add_throttled(&self, _dir: Direction, _ns: u64) {}
    }

    fn shaper(rate: Option<u64>) -> (Shaper, Arc<FixedRate>) {
        let src = Arc::new(FixedRate {
            rates: [rate, None],
            ..Default::default()
        });
        (Shaper::new(Box::new(src.clone())), src)
    }

    /// One frame of `bytes` through the shaper at `now`, as a queue sends it: admitted, then
    /// charged.
    fn send(s: &Shaper, a: &mut Allowance, now: Instant, bytes: u64) -> Admit {
        let admit = s.admit(Direction::Tx, a, || now);
        if admit == Admit::Go {
            a.charge(bytes);
        }
        admit
    }

    #[test]
    fn unlimited_always_admits() {
        let (s, src) = shaper(None);
        let mut a = Allowance::default();
        let now = Instant::now();
        for _ in 0..1000 {
            assert_eq!(send(&s, &mut a, now, 1514), Admit::Go);
        }
        assert_eq!(
            src.bytes[0].load(Ordering::Relaxed),
            0,
            "accounted when settled"
        );
        s.settle(Direction::Tx, &mut a);
        assert_eq!(src.bytes[0].load(Ordering::Relaxed), 1514 * 1000);
    }

    #[test]
    fn an_allowance_spends_without_the_clock_until_it_runs_out() {
        // 1 000 B/s: the bucket gains under a byte while the test runs.
        let (s, src) = shaper(Some(1000));
        let mut a = Allowance::default();
        let now = Instant::now();
        let mut clock_reads = 0;
        let mut sent = 0u64;
        // The starting burst, MIN_BURST_BYTES: two 1 000-byte frames, the third into debt.
        while s.admit(Direction::Tx, &mut a, || {
            clock_reads += 1;
            now
        }) == Admit::Go
        {
            a.charge(1000);
            sent += 1000;
        }
        assert_eq!(
            (sent, clock_reads),
            (4000, 2),
            "one read to take, one to ask again"
        );
        s.settle(Direction::Tx, &mut a);
        assert_eq!(src.bytes[0].load(Ordering::Relaxed), 4000);
        let debt = MIN_BURST_BYTES - 4000.0;
        let tokens = s.buckets()[0].tokens;
        assert!((tokens - debt).abs() < 1.0, "the debt went back: {tokens}");
    }

    #[test]
    fn a_rate_set_during_an_unlimited_batch_is_owed_that_batch() {
        let src = Arc::new(SwitchedRate::default());
        let s = Shaper::new(Box::new(src.clone()));
        let mut a = Allowance::default();
        let now = Instant::now();
        for _ in 0..10 {
            assert_eq!(send(&s, &mut a, now, 1000), Admit::Go, "unlimited");
        }
        src.limited.store(true, Ordering::Relaxed);
        s.settle(Direction::Tx, &mut a);
        let tokens = s.buckets()[0].tokens;
        assert!(
            (tokens - (MIN_BURST_BYTES - 10_000.0)).abs() < 1.0,
            "the batch's 10 000 bytes are debt: {tokens}"
        );
        assert!(matches!(send(&s, &mut a, now, 1000), Admit::Wait(_)));
    }

    #[test]
    fn an_allowance_leaves_other_queues_only_what_it_gives_back() {
        let (s, _src) = shaper(Some(1000));
        let (mut a, mut b) = (Allowance::default(), Allowance::default());
        let now = Instant::now();
        assert_eq!(send(&s, &mut a, now, 100), Admit::Go);
        // The bucket is empty, not in debt: b may send one frame, into debt.
        assert_eq!(send(&s, &mut b, now, 100), Admit::Go);
        assert!(matches!(send(&s, &mut b, now, 100), Admit::Wait(_)));
        s.settle(Direction::Tx, &mut a);
        assert_eq!(send(&s, &mut b, now, 100), Admit::Go, "a's tokens are back");
        s.settle(Direction::Tx, &mut b);
        let tokens = s.buckets()[0].tokens;
        assert!(
            (tokens - (MIN_BURST_BYTES - 300.0)).abs() < 1.0,
            "three frames: {tokens}"
        );
    }

    #[test]
    fn simulated_clock_gives_the_rate_for_any_frame_size() {
        for frame in [60u64, 1514, 9000, 65_000] {
            let rate = 1_000_000u64; // 8 Mbit/s
            let (s, _src) = shaper(Some(rate));
            let mut a = Allowance::default();
            let start = Instant::now();
            let mut now = start;
            let mut sent = 0u64;
            let end = start + Duration::from_secs(10);
            while now < end {
                match send(&s, &mut a, now, frame) {
                    Admit::Go => sent += frame,
                    Admit::Wait(d) => {
                        assert!(d > Duration::ZERO && d <= MAX_WAIT, "{d:?}");
                        now += d;
                    }
                }
            }
            let achieved = sent as f64 / 10.0;
            let err = (achieved - rate as f64).abs() / rate as f64;
            // The initial burst and one frame of debt are the only slack.
            let slack = (Bucket::burst(rate as f64) + frame as f64) / 10.0 / rate as f64;
            assert!(err <= slack + 1e-6, "frame {frame}: {achieved} vs {rate}");
        }
    }

    #[test]
    fn waits_are_bounded_and_counted() {
        let (s, src) = shaper(Some(0));
        let mut a = Allowance::default();
        let now = Instant::now();
        a.charge(1_000_000);
        assert_eq!(send(&s, &mut a, now, 0), Admit::Wait(MAX_WAIT));
        s.waiting(Direction::Tx, &mut a, now);
        assert!(src.backlogged[0].load(Ordering::Relaxed));
        s.idle(Direction::Tx, &mut a);
        assert!(!src.backlogged[0].load(Ordering::Relaxed));
        assert!(src.throttled_ns[0].load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn a_direction_is_backlogged_while_any_queue_waits() {
        // Two NICs of one sliver: one waits for tokens, the other's ring runs empty.
        let (s, src) = shaper(Some(0));
        let (mut waits, mut other, mut later) = Default::default();
        let now = Instant::now();
        s.waiting(Direction::Tx, &mut waits, now);
        s.waiting(Direction::Tx, &mut later, now);
        s.waiting(Direction::Tx, &mut later, now);
        let backlogged = || src.backlogged[0].load(Ordering::Relaxed);
        s.idle(Direction::Tx, &mut other);
        assert!(backlogged(), "a queue that never waited clears nothing");
        s.idle(Direction::Tx, &mut later);
        assert!(backlogged(), "one queue still waits");
        // Settling a batch keeps a queue's waiting.
        s.settle(Direction::Tx, &mut waits);
        s.idle(Direction::Tx, &mut later);
        assert!(backlogged(), "an idle queue is counted once");
        s.idle(Direction::Tx, &mut waits);
        assert!(!backlogged());
        assert!(src.throttled_ns[0].load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn wake_ups_are_at_most_one_per_quantum() {
        // 1 Gbit/s with 64-byte frames: each wait is about a quantum, not one frame time.
        let rate = 125_000_000u64;
        let (s, _src) = shaper(Some(rate));
        let mut a = Allowance::default();
        let mut now = Instant::now();
        let mut waits = 0;
        let end = now + Duration::from_secs(1);
        while now < end {
            match send(&s, &mut a, now, 64) {
                Admit::Go => {}
                Admit::Wait(d) => {
                    waits += 1;
                    now += d;
                }
            }
        }
        assert!(waits <= 1001, "{waits} wake-ups in one second");
    }

    #[test]
    fn directions_are_independent() {
        let src = Arc::new(FixedRate {
            rates: [Some(1000), Some(1000)],
            ..Default::default()
        });
        let s = Shaper::new(Box::new(src.clone()));
        let (mut tx, mut rx) = (Allowance::default(), Allowance::default());
        let now = Instant::now();
        tx.charge(100_000);
        assert!(matches!(
            s.admit(Direction::Tx, &mut tx, || now),
            Admit::Wait(_)
        ));
        s.waiting(Direction::Tx, &mut tx, now);
        assert_eq!(s.admit(Direction::Rx, &mut rx, || now), Admit::Go);
        assert!(!src.backlogged[1].load(Ordering::Relaxed));
    }
}
