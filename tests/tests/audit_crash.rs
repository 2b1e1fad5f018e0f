//! The audit log under SIGKILL: every record reported durable survives, torn tails are
//! trimmed, corrupted records are reported and skipped, and the capture ring stays readable.

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use audit_store::capture::{read_ring, RING_FILE};
use audit_store::{codec, reader, segment, synth, FlowRecord};
use e2e::run::ChildGuard;

const HELPER: &str = env!("CARGO_BIN_EXE_audit_writer");
const BASE_NS: u64 = 1_795_834_800_000_000_000;

/// What one run of the helper printed before it was killed.
#[derive(Debug, Default)]
struct Run {
    recovered: serde_json::Value,
    durable: u64,
    dropped: HashSet<u64>,
}

/// When to kill the helper.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// After this long, whatever it is doing.
    After(Duration),
    /// Once it has reported recovery and a durable sequence above this (at most 20 s).
    DurableAbove(u64),
}

/// Start the helper on `dir`, SIGKILL it at `when`, collect its output.
fn run_and_kill(dir: &Path, when: KillAt) -> Run {
    let child = Command::new(HELPER)
        .args(["crash", &dir.display().to_string(), "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn audit_writer");
    let mut child = ChildGuard::new(child);
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut run = Run::default();
    let take = |line: String, run: &mut Run| match line.split_once(' ') {
        Some(("recovered", json)) => run.recovered = serde_json::from_str(json).expect("json"),
        Some(("durable", n)) => run.durable = n.parse().expect("seq"),
        Some(("dropped", n)) => {
            run.dropped.insert(n.parse().expect("seq"));
        }
        _ => panic!("unexpected helper output {line:?}"),
    };
    match when {
        KillAt::After(d) => std::thread::sleep(d),
        KillAt::DurableAbove(seq) => {
            let deadline = Instant::now() + Duration::from_secs(20);
            while run.recovered.is_null() || run.durable <= seq {
                let left = deadline.saturating_duration_since(Instant::now());
                let line = rx.recv_timeout(left).expect("helper made progress in time");
                take(line, &mut run);
            }
        }
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    reader.join().expect("reader");
    for line in rx.try_iter() {
        take(line, &mut run);
    }
    run
}

fn all_records(dir: &Path) -> Vec<FlowRecord> {
    let mut out = Vec::new();
    reader::for_each_in_dir(dir, |r| {
        out.push(r);
        true
    })
    .expect("read the log");
    out
}

fn expected(seq: u64) -> FlowRecord {
    let mut r = synth::flow(seq, "crash", BASE_NS + seq * 1_000_000);
    r.seq = seq;
    r
}

/// Append half of a valid frame to the newest segment if it is still being written (has no
/// index), as a write cut short would leave it; returns the bytes appended.
fn tear_tail(dir: &Path) -> u64 {
    let Some(seg) = segment::list(dir).expect("list").pop() else {
        return 0;
    };
    if seg.index.is_some() {
        return 0;
    }
    let mut frame = Vec::new();
    codec::encode(&expected(10_000_000), &mut frame).expect("encode");
    let half = &frame[..frame.len() / 2];
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(&seg.path)
        .expect("open");
    std::io::Write::write_all(&mut f, half).expect("append");
    half.len() as u64
}

#[test]
fn sigkill_at_random_points_loses_no_durable_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("crash");
    let started = Instant::now();
    let mut durable = 0u64;
    let mut dropped = HashSet::new();
    let mut torn_written = 0u64;
    let mut kills_after_durable = 0;
    let mut recoveries = 0;
    let mut trims = 0;
    let mut ring_seen = false;
    for i in 0..100u64 {
        let run = run_and_kill(
            &dir,
            KillAt::After(Duration::from_millis(fastrand::u64(5..80))),
        );
        // A kill can land during recovery itself, before the helper reports it.
        let r = &run.recovered;
        if let Some(next_seq) = r["next_seq"].as_u64() {
            recoveries += 1;
            assert!(
                next_seq > durable,
                "iteration {i}: numbering must continue after every durable record: {r}"
            );
            if torn_written > 0 {
                assert!(
                    r["torn_bytes_trimmed"].as_u64().expect("trimmed") >= torn_written,
                    "iteration {i}: the torn tail was not trimmed: {r}"
                );
                trims += 1;
            }
            assert_eq!(r["corrupt_records"], 0, "iteration {i}: {r}");
        }
        if run.durable > durable {
            kills_after_durable += 1;
        }
        durable = durable.max(run.durable);
        dropped.extend(run.dropped);
        // A kill in the first milliseconds of the first runs can come before the helper made
        // its log directory; then nothing can have been reported durable.
        if !dir.exists() {
            assert_eq!(
                durable, 0,
                "iteration {i}: durable records but no log directory"
            );
            torn_written = 0;
            continue;
        }
        // Everything reported durable, in this run or an earlier one, is there and intact.
        let records = all_records(&dir);
        let present: HashSet<u64> = records.iter().map(|r| r.seq).collect();
        for seq in 1..=durable {
            assert!(
                present.contains(&seq) || dropped.contains(&seq),
                "iteration {i}: durable record {seq} is missing"
            );
        }
        for r in &records {
            assert_eq!(
                *r,
                expected(r.seq),
                "iteration {i}: record {} changed",
                r.seq
            );
        }
        // Half the time, leave a torn record behind as a write cut short would.
        torn_written = if i % 2 == 0 { tear_tail(&dir) } else { 0 };
        // The capture ring is readable after every kill once it exists (a kill in the first
        // milliseconds of the first runs can come before the helper created it): at most the
        // slot being written is torn.
        let ring_path = dir.join(RING_FILE);
        if !ring_seen && !ring_path.exists() {
            continue;
        }
        ring_seen = true;
        let ring = read_ring(&ring_path).expect("ring readable");
        assert!(ring.torn <= 1, "iteration {i}: {} torn slots", ring.torn);
        let seqs: Vec<u64> = ring.packets.iter().map(|p| p.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        // Every packet read back is whole: what the helper pushed for the record its time
        // names, to the byte.
        for p in &ring.packets {
            let rec = synth::flow((p.ts_ns - BASE_NS) / 1_000_000, "crash", p.ts_ns);
            let frame = synth::frame(&rec, 200);
            assert_eq!(
                (p.nic, p.direction, p.verdict, p.orig_len, &p.data[..]),
                (rec.nic, rec.direction, rec.verdict, 254, &frame[..128]),
                "iteration {i}: capture seq {}",
                p.seq
            );
        }
    }
    assert!(ring_seen, "the helper never created its capture ring");
    eprintln!(
        "100 kills: {durable} records durable, {recoveries} recoveries reported, \
         {trims} torn tails trimmed, {kills_after_durable} runs made progress"
    );
    assert!(durable > 1000, "the helper made {durable} records durable");
    assert!(
        kills_after_durable > 30,
        "only {kills_after_durable} runs made progress"
    );
    assert!(
        recoveries > 30 && trims > 10,
        "{recoveries} recoveries, {trims} torn tails trimmed"
    );
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_corrupted_record_is_reported_and_skipped_not_fatal() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("crash");
    let run = run_and_kill(&dir, KillAt::DurableAbove(1000));
    // Flip a byte in the middle of the newest segment (unindexed: the writer was killed).
    let seg = segment::list(&dir).expect("list").pop().expect("segment");
    assert!(seg.index.is_none());
    let mut raw = fs::read(&seg.path).expect("read");
    let mid = raw.len() / 2;
    raw[mid] ^= 0xff;
    fs::write(&seg.path, raw).expect("write");
    let before: HashSet<u64> = all_records(&dir).iter().map(|r| r.seq).collect();
    let run2 = run_and_kill(&dir, KillAt::DurableAbove(run.durable));
    let r = &run2.recovered;
    assert_eq!(r["corrupt_records"], 1, "{r}");
    assert!(
        run2.durable > run.durable,
        "the writer went on after the corruption"
    );
    let after: HashSet<u64> = all_records(&dir).iter().map(|r| r.seq).collect();
    assert_eq!(
        before.difference(&after).count(),
        0,
        "the reader already skipped the damaged record; recovery loses nothing more"
    );
    let written = before.iter().max().copied().unwrap_or(0);
    let skipped = (1..=written).filter(|s| !after.contains(s)).count();
    assert_eq!(skipped, 1, "exactly the corrupted record is skipped");
}
