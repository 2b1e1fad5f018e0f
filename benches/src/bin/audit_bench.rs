//! The flow audit store: records per second written (group commit, default settings), bytes
//! per flow on disk (segments and indexes), `audit query` latency over a generated day, and
//! the cost of one capture-ring push.
//!
//! The day: one sliver, `DAY_RATE` flows/s for 24 h, plus a dense stretch of `DENSE_S`
//! seconds at 10 000 flows/s starting at 12:00, each flow lasting up to 60 s (an active
//! timeout of 60 s), destinations drawn from 100 000 addresses. Queries ask for a
//! destination that had a flow at a random time (window ±60 s, the default), in the sparse
//! part, in the dense part, and in the segment a live writer still has open (~16 MiB, read
//! whole because it has no index yet; the other queries skip it by its span file).
//!
//! A full day at 10 000 flows/s (864 M records, ~81 GB) does not fit the development host's
//! disk, let alone 30 of them; what grows with the retained days is only the segment files a
//! query has to list (it opens the segments whose span, read from the index file's name,
//! overlaps its window). `PAD_DAYS` adds that many earlier days of sealed segments, each with
//! the 5 400 segments (empty, with index names spanning 16 s of that day) that a day at
//! 10 000 flows/s makes, so the log is as long as `PAD_DAYS` such days plus the generated one.
//! Segments live in day directories (`audit_store::segment`): a query lists the days around
//! its window only.
//!
//! Run: `cargo build --release -p benches && target/release/audit_bench [DAY_RATE] [DENSE_S] [PAD_DAYS]`
//! (defaults 100, 600, 0; needs ~1.4 GB of temporary disk with the defaults).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use audit_store::capture::{CaptureConfig, CaptureRing, RING_FILE};
use audit_store::params::{format_time, QueryRequest};
use audit_store::segment::Segment;
use audit_store::writer::AppendError;
use audit_store::{query, synth, AuditConfig, AuditLog, FlowRecord};
use packet::{Direction, Verdict};

/// 2026-11-28T00:00:00Z.
const DAY0: u64 = 1_795_824_000_000_000_000;
const S: u64 = 1_000_000_000;
const DENSE_RATE: u64 = 10_000;
/// Segments a day at 10 000 flows/s makes (16 MiB, ~164 000 records, every ~16 s).
const PAD_PER_DAY: u64 = 5_400;

fn dst(n: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc633_0000 + (n % 100_000) as u32)) // 198.51.0.0/16 and up
}

/// Flow `n` ending at `last_ns`: a guest address talking to one of 100 000 destinations.
fn flow(n: u64, last_ns: u64) -> FlowRecord {
    let mut r = synth::flow(n, "bench", last_ns);
    r.src = Some(IpAddr::V4(Ipv4Addr::new(10, 1, 0, (n % 4) as u8 + 2)));
    r.dst = Some(dst(n.wrapping_mul(2_654_435_761)));
    r.ethertype = 0x0800;
    r.protocol = 6;
    r.first_ns = last_ns.saturating_sub((n % 60) * S);
    r
}

/// Write `rate` flows/s from `from_s` for `secs` seconds; returns (records, sample targets).
fn write(log: &AuditLog, from_s: u64, secs: u64, rate: u64, seq: &mut u64) -> Vec<FlowRecord> {
    let mut samples = Vec::new();
    for t in 0..secs * rate {
        let last_ns = DAY0 + from_s * S + t * S / rate;
        let mut rec = flow(*seq, last_ns);
        loop {
            match log.append(&rec) {
                Ok(assigned) => {
                    if seq.is_multiple_of(9973) {
                        rec.seq = assigned;
                        samples.push(rec);
                    }
                    break;
                }
                // The benchmark measures what the writer sustains, so it waits when the queue
                // is full; the packet path would drop and count instead.
                Err(AppendError::QueueFull) => std::thread::yield_now(),
                Err(e) => panic!("append: {e}"),
            }
        }
        *seq += 1;
    }
    samples
}

/// Bytes of the files in `dir` and its day directories.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let e = e.expect("entry");
            let meta = e.metadata().expect("stat");
            if meta.is_dir() {
                dir_bytes(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

/// Time `CaptureRing::push` of 154-byte frames into a default (64 MiB, snap 128) ring.
fn capture_row(state: &Path) -> String {
    let path = state.join(RING_FILE);
    let mut ring = CaptureRing::open(&path, &CaptureConfig::default()).expect("ring");
    let frame = synth::frame(&flow(1, DAY0), 100);
    let n = 4_000_000u64;
    let t0 = Instant::now();
    for i in 0..n {
        ring.push(DAY0 + i, 0, Direction::Rx, Verdict::Forwarded, 154, &frame);
    }
    let ns = t0.elapsed().as_secs_f64() * 1e9 / n as f64;
    let slots = ring.geometry().slots;
    format!("capture push, 154-B frames | {ns:.0} ns/packet ({n} packets into {slots} slots)")
}

/// 200 queries (±60 s, by destination) for flows of `targets`; one table row.
fn measure(state: &Path, name: &str, targets: &[FlowRecord], segments: usize) -> String {
    let mut ms = Vec::new();
    let mut opened = Vec::new();
    let mut examined = Vec::new();
    let mut decoded = Vec::new();
    for (i, t) in targets.iter().cycle().take(200).enumerate() {
        let at = t.last_ns - (i as u64 % 30) * S;
        let req = QueryRequest {
            at: Some(format_time(at)),
            dst: t.dst.map(|a| a.to_string()),
            ..QueryRequest::default()
        };
        let p = req.parse("").expect("params");
        let q0 = Instant::now();
        let a = query::run(state, &p).expect("query");
        ms.push(q0.elapsed().as_secs_f64() * 1e3);
        assert!(
            a.flows.iter().any(|f| f.record.seq == t.seq),
            "target found"
        );
        opened.push(a.stats.segments_opened as f64);
        examined.push(a.stats.records_examined as f64);
        decoded.push(a.stats.records_decoded as f64);
    }
    let med = percentile(&mut ms.clone(), 0.5);
    let p99 = percentile(&mut ms, 0.99);
    let seg = percentile(&mut opened, 0.5);
    let recs = percentile(&mut examined, 0.5);
    let built = percentile(&mut decoded, 0.5);
    format!(
        "query ±60s, {name:<13} | median {med:6.2} ms | p99 {p99:6.2} ms | segments opened {seg:.0} of {segments} | records checked {recs:.0}, decoded {built:.0}"
    )
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
}

fn main() {
    let arg = |i: usize, default: u64| -> u64 {
        std::env::args()
            .nth(i)
            .map(|a| a.parse().expect("a number"))
            .unwrap_or(default)
    };
    let (day_rate, dense_s, pad) = (arg(1, 100), arg(2, 600), arg(3, 0));
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = tmp.path().to_path_buf();
    let dir = state.join("audit").join("bench");
    let (log, _) = AuditLog::open(&dir, AuditConfig::default()).expect("open");
    let mut seq = 0u64;
    let noon = 12 * 3600;
    let start = Instant::now();
    let mut sparse = write(&log, 0, noon, day_rate, &mut seq);
    let sparse_records = seq;
    let dense_start = Instant::now();
    let dense = write(&log, noon, dense_s, DENSE_RATE, &mut seq);
    log.flush(Duration::from_secs(60));
    let dense_secs = dense_start.elapsed().as_secs_f64();
    let dense_records = seq - sparse_records;
    sparse.extend(write(
        &log,
        noon + dense_s,
        24 * 3600 - noon - dense_s,
        day_rate,
        &mut seq,
    ));
    log.flush(Duration::from_secs(60));
    let total_secs = start.elapsed().as_secs_f64();
    let counters = log.counters();
    drop(log);
    assert_eq!(counters.durable, seq, "{counters:?}");
    let bytes = dir_bytes(&dir);
    let day_segments = audit_store::segment::list(&dir).expect("list").len();
    // A live sliver: its writer open, the segment being written (no index yet, a span file)
    // full at ~16 MiB (178 000 records at 10 000/s just after the day).
    let (log, _) = AuditLog::open(&dir, AuditConfig::default()).expect("reopen");
    let mut live_seq = seq;
    let live = write(
        &log,
        24 * 3600,
        178_000 / DENSE_RATE,
        DENSE_RATE,
        &mut live_seq,
    );
    log.flush(Duration::from_secs(60));
    for i in 0..pad * PAD_PER_DAY {
        // Sealed segments of the days before, 16 s each, never in a query's window.
        let first = DAY0 - S * 86_400 * pad + i * 16 * S;
        let seg = Segment::new(&dir, first);
        std::fs::create_dir_all(seg.dir()).expect("day dir");
        std::fs::write(&seg.path, b"").expect("pad segment");
        std::fs::write(seg.index_path(first, first + 16 * S), b"").expect("pad index");
    }
    let segments = audit_store::segment::list(&dir).expect("list").len();
    let mut rows = Vec::new();
    for (name, targets) in [
        ("sparse day", &sparse),
        ("dense stretch", &dense),
        ("open segment", &live),
    ] {
        rows.push(measure(&state, name, targets, segments));
    }
    drop(log);
    println!("audit store benchmark: 1 sliver, {seq} records over 24 h ({day_rate}/s, plus {dense_s} s at {DENSE_RATE}/s), {pad} padded days of {PAD_PER_DAY} segments");
    println!(
        "write, default config      | {:.0} records/s overall, {:.0} records/s in the dense stretch | {} group commits (write + fdatasync)",
        seq as f64 / total_secs,
        dense_records as f64 / dense_secs,
        counters.commits
    );
    println!(
        "on disk                    | {:.1} bytes/flow ({} bytes in {} segments with indexes)",
        bytes as f64 / seq as f64,
        bytes,
        day_segments
    );
    for r in rows {
        println!("{r}");
    }
    println!("{}", capture_row(&state));
    println!(
        "command: cargo build --release -p benches && target/release/audit_bench {day_rate} {dense_s} {pad}"
    );
}
