//! The node's bandwidth allocation tick (`node_daemon::shares::coordinator::Coordinator::tick`,
//! every 2 ms) against the number of slivers: 1, 32 and 256 (the ledger's every slot), each
//! backlogged both ways with fresh bytes every round (the VMM side's counters, advanced here),
//! shares 1..8, half with a minimum rate and a daily budget. Reported: CPU time per tick
//! (median, p99, max over 20 000 ticks), against the 2 ms period.
//!
//! Run: `cargo build --release --workspace --bins && target/release/alloc_tick [TICKS]`

use std::sync::atomic::Ordering;
use std::sync::Arc;

use benches::summarize;
use node_daemon::shares::coordinator::{Coordinator, NodeRates};
use node_daemon::shares::slots::{assign, unix_now, Limits};
use vmm::ledger::{monotonic_ns, Ledger};

fn thread_cpu_ns() -> u64 {
    // SAFETY: clock_gettime(2) writes into the timespec we pass.
    let mut ts = unsafe { std::mem::zeroed::<libc::timespec>() };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let ticks: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("TICKS must be a number"))
        .unwrap_or(20_000);
    println!("allocation tick vs slivers ({ticks} ticks each; period 2 ms)");
    println!(
        "{:>8} | {:>12} {:>12} {:>12} | {:>10}",
        "slivers", "median us", "p99 us", "max us", "of period"
    );
    for n in [1usize, 32, 256] {
        let dir = tempfile::tempdir().expect("tmp");
        let ledger =
            Arc::new(Ledger::create_or_open(&dir.path().join("shaper.ledger")).expect("ledger"));
        for i in 0..n {
            let limits = Limits {
                share: (i % 8 + 1) as u32,
                min_rate: if i % 2 == 0 { 1_000_000 } else { 0 },
                max_rate: None,
                budget: (i % 2 == 0).then_some((1 << 20, 2 << 20)),
            };
            assign(&ledger, &format!("s{i}"), &limits).expect("slot");
        }
        let mut coordinator = Coordinator::new(
            ledger.clone(),
            NodeRates {
                tx: 1_000_000_000,
                rx: 1_000_000_000,
            },
        );
        let mut samples = Vec::with_capacity(ticks);
        for _ in 0..ticks {
            let now = monotonic_ns();
            for (_, slot) in ledger.slots().filter(|(_, s)| s.is_used()) {
                slot.tx_bytes.fetch_add(150_000, Ordering::Relaxed);
                slot.rx_bytes.fetch_add(150_000, Ordering::Relaxed);
                slot.tx_backlog.store(1 << 20, Ordering::Relaxed);
                slot.rx_backlog.store(1 << 20, Ordering::Relaxed);
                slot.heartbeat_ns.store(now, Ordering::Relaxed);
            }
            let before = thread_cpu_ns();
            coordinator.tick(now, unix_now());
            samples.push((thread_cpu_ns() - before) as f64 / 1e3);
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)];
        let s = summarize(&samples);
        println!(
            "{n:>8} | {:>12.1} {:>12.1} {:>12.1} | {:>9.2} %",
            s.median,
            p99,
            s.max,
            100.0 * s.median / 2000.0
        );
    }
}
