//! The shaper stage in the device: backpressure on both pipelines, nothing dropped, and a
//! throttled device that sleeps on its timer instead of spinning.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use devices::virtio::net::shaper::FixedRate;

use crate::fixture::*;

const FRAME: usize = 1000;

fn shaped(tx: Option<u64>, rx: Option<u64>) -> (Fixture, Arc<FixedRate>) {
    let src = Arc::new(FixedRate {
        rates: [tx, rx],
        ..Default::default()
    });
    let shaper = Arc::new(Shaper::new(Box::new(src.clone())));
    let stages = Stages {
        shaper: Some(shaper),
        ..Stages::default()
    };
    (fixture_with(stages), src)
}

impl Fixture {
    /// The guest queues `n` frames of [`FRAME`] bytes (numbered from 0) and kicks TX; the
    /// device runs once.
    fn queue_tx(&mut self, n: u8) {
        for i in 0..n {
            self.driver.add_buffer(TXQ, Some(&frame(FRAME, i)), 0);
        }
        self.driver.kick(TXQ);
        self.pump();
    }

    /// Run the event loop for `d`; returns how many times it woke up.
    fn run_for(&mut self, d: Duration) -> usize {
        let end = Instant::now() + d;
        let mut wakeups = 0;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
            wakeups += self.em.run_with_timeout(ms).expect("event loop");
        }
        wakeups
    }
}

#[test]
fn tx_over_its_rate_waits_in_the_ring_and_nothing_is_lost() {
    // 100 kB/s: the 3 kB starting burst lets 4 frames of 1000 bytes out at once.
    let (mut f, src) = shaped(Some(100_000), None);
    f.queue_tx(20);
    let first = f.driver.take_used(TXQ).len();
    assert_eq!(first, 4, "burst");
    assert_eq!(f.snap().tx_packets, 4);
    assert!(
        src.backlogged[0].load(Ordering::Relaxed),
        "demand signalled"
    );
    assert!(f.snap().tx_throttled >= 1);
    // 16 more frames need 160 ms at 100 kB/s; the timer brings them out in order.
    f.run_for(Duration::from_millis(100));
    let mid = f.snap().tx_packets;
    assert!((10..=16).contains(&mid), "{mid} frames after 100 ms");
    f.run_for(Duration::from_millis(150));
    assert_eq!(f.snap().tx_packets, 20);
    assert_eq!(f.snap().tx_dropped, 0);
    for i in 0..20 {
        let got = f.recv_peer().expect("frame reached the backend");
        assert_eq!(got, frame(FRAME, i), "frame {i} in order and intact");
    }
    assert_eq!(src.bytes[0].load(Ordering::Relaxed), 20 * (FRAME as u64));
    // The ring is empty again: the demand signal clears, the throttled time was counted.
    f.send(&frame(10, 0));
    f.run_for(Duration::from_millis(20));
    assert!(!src.backlogged[0].load(Ordering::Relaxed));
    assert!(src.throttled_ns[0].load(Ordering::Relaxed) >= 100_000_000);
}

#[test]
fn throttled_device_sleeps_on_its_timer() {
    // Rate 0: nothing may go; the device must wake only every MAX_WAIT to re-read its rate.
    let (mut f, _src) = shaped(Some(0), None);
    f.queue_tx(6);
    let sent = f.snap().tx_packets;
    assert_eq!(sent, 4, "only the starting burst");
    let wakeups = f.run_for(Duration::from_millis(200));
    // 200 ms / MAX_WAIT (50 ms) = 4 timer wake-ups, plus slack for scheduling.
    assert!(wakeups <= 6, "{wakeups} wake-ups in 200 ms");
    assert!(
        wakeups >= 3,
        "the timer keeps re-checking the rate ({wakeups})"
    );
    // Guest kicks while throttled do not bypass the shaper.
    f.driver.kick(TXQ);
    f.pump();
    assert_eq!(f.snap().tx_packets, sent);
}

#[test]
fn rx_over_its_rate_waits_in_the_backend() {
    let (mut f, src) = shaped(None, Some(100_000));
    f.post_rx(20, 2048);
    for i in 0..20 {
        f.peer.send(&frame(FRAME, i)).expect("inject");
    }
    f.pump();
    assert_eq!(f.snap().rx_packets, 4, "burst");
    assert!(src.backlogged[1].load(Ordering::Relaxed));
    f.run_for(Duration::from_millis(260));
    let s = f.snap();
    assert_eq!(s.rx_packets, 20, "the rest came as tokens did");
    assert_eq!(s.rx_dropped, 0);
    assert!(s.rx_throttled >= 1);
    // TX is not limited meanwhile.
    assert_eq!(src.rates[0], None);
}

#[test]
fn unlimited_shaper_changes_nothing() {
    let (mut f, src) = shaped(None, None);
    f.queue_tx(50);
    assert_eq!(f.snap().tx_packets, 50);
    assert_eq!(f.snap().tx_throttled, 0);
    assert_eq!(src.bytes[0].load(Ordering::Relaxed), 50 * FRAME as u64);
    for _ in 0..50 {
        assert!(f.recv_peer().is_some());
    }
    f.assert_still_works();
}

#[test]
fn a_reset_while_frames_wait_for_tokens_ends_the_demand_signal() {
    // Rate 0: frames wait in the ring, signalled as backlog, until the driver resets.
    let (mut f, src) = shaped(Some(0), None);
    f.queue_tx(6);
    assert!(src.backlogged[0].load(Ordering::Relaxed), "frames wait");
    f.driver.init(FEATURES, 2, QUEUE_SIZE);
    f.pump();
    assert!(
        !src.backlogged[0].load(Ordering::Relaxed),
        "a reset queue's frames wait no more"
    );
    assert!(src.throttled_ns[0].load(Ordering::Relaxed) > 0);
}
