//! Helper for the audit tests: writes flow records with the library's writer and reports on
//! stdout what it was told is durable, so a test can kill it at any point and check.
//!
//! `audit_writer crash DIR COMMIT_MS`: write synthetic records (and one captured frame each,
//! in DIR/capture.ring) forever, printing `recovered <json>` once, then `durable <seq>`
//! whenever the durable sequence moves, and `dropped <seq>` for a record the queue refused.
//!
//! `audit_writer fill STATE_DIR SLIVER COUNT START_NS STEP_NS`: write COUNT records (and one
//! captured frame each) one STEP_NS apart, close cleanly, print the counters.
//!
//! `audit_writer diskfull DIR`: open the log and a capture ring, fill the disk with a file,
//! try a second ring (printing `ring-refused <error>`), keep writing (printing
//! `full <counters>`), delete the file, wait until every record is durable (printing
//! `freed <counters>`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audit_store::capture::{CaptureConfig, CaptureRing, RING_FILE};
use audit_store::{synth, AuditConfig, AuditLog};

/// Records are stamped from this time on (2026-11-28T03:00:00Z).
const BASE_NS: u64 = 1_795_834_800_000_000_000;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).unwrap_or_else(|| usage()) };
    let num = |i: usize| -> u64 { arg(i).parse().unwrap_or_else(|_| usage()) };
    match arg(1) {
        "crash" => crash(Path::new(arg(2)), num(3)),
        "fill" => fill(Path::new(arg(2)), arg(3), num(4), num(5), num(6)),
        "diskfull" => diskfull(Path::new(arg(2))),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: audit_writer crash DIR COMMIT_MS | fill STATE_DIR SLIVER COUNT START_NS STEP_NS | diskfull DIR");
    std::process::exit(2)
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn crash(dir: &Path, commit_ms: u64) {
    let config = AuditConfig {
        commit_interval: Duration::from_millis(commit_ms),
        segment_bytes: 64 * 1024,
        ..AuditConfig::default()
    };
    let (log, report) = AuditLog::open(dir, config).expect("open the audit log");
    say(&format!(
        "recovered {}",
        serde_json::to_string(&report).expect("json")
    ));
    let capture = CaptureConfig {
        bytes: 256 * 1024,
        ..CaptureConfig::default()
    };
    let mut ring = CaptureRing::open(&dir.join(RING_FILE), &capture).expect("open the ring");
    let mut durable = log.durable_seq();
    let mut seq = report.next_seq;
    loop {
        for _ in 0..50 {
            let rec = synth::flow(seq, "crash", BASE_NS + seq * 1_000_000);
            match log.append(&rec) {
                Ok(got) => assert_eq!(got, seq, "sequence numbers are consecutive"),
                Err(_) => say(&format!("dropped {seq}")),
            }
            let frame = synth::frame(&rec, 200);
            ring.push(
                rec.last_ns,
                rec.nic,
                rec.direction,
                rec.verdict,
                254,
                &frame,
            );
            seq += 1;
        }
        let now = log.durable_seq();
        if now != durable {
            durable = now;
            say(&format!("durable {durable}"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn fill(state_dir: &Path, sliver: &str, count: u64, start_ns: u64, step_ns: u64) {
    let dir = audit_store::sliver_dir(state_dir, sliver);
    let config = AuditConfig {
        commit_interval: Duration::from_millis(50),
        ..AuditConfig::default()
    };
    let (log, _) = AuditLog::open(&dir, config).expect("open the audit log");
    let capture = CaptureConfig {
        bytes: 1 << 20,
        ..CaptureConfig::default()
    };
    let mut ring = CaptureRing::open(&dir.join(RING_FILE), &capture).expect("open the ring");
    for i in 0..count {
        let mut rec = synth::flow(i + 1, sliver, start_ns + i * step_ns);
        rec.slice = format!("{sliver}-slice");
        rec.slice_id = 700 + sliver.len() as u32;
        log.append(&rec).expect("append");
        let frame = synth::frame(&rec, 100);
        ring.push(
            rec.last_ns,
            rec.nic,
            rec.direction,
            rec.verdict,
            frame.len() as u32,
            &frame,
        );
    }
    log.flush(Duration::from_secs(10));
    say(&serde_json::to_string(&log.counters()).expect("json"));
}

fn diskfull(dir: &Path) {
    let config = AuditConfig {
        commit_interval: Duration::from_millis(10),
        ..AuditConfig::default()
    };
    let (log, _) = AuditLog::open(dir, config).expect("open the audit log");
    let capture = CaptureConfig {
        bytes: 64 * 1024,
        ..CaptureConfig::default()
    };
    let mut ring = CaptureRing::open(&dir.join(RING_FILE), &capture).expect("open the ring");
    let filler = dir.join("filler");
    fill_disk(&filler);
    // A ring cannot be made on a full disk: open says so (its blocks are reserved up front),
    // rather than the first push dying of SIGBUS.
    match CaptureRing::open(&dir.join("second.ring"), &capture) {
        Ok(_) => panic!("a capture ring opened on a full disk"),
        Err(e) => say(&format!("ring-refused {e}")),
    }
    let mut seq = 1;
    let write = |seq: &mut u64, ring: &mut CaptureRing| {
        let rec = synth::flow(*seq, "full", BASE_NS + *seq);
        let _ = log.append(&rec);
        let frame = synth::frame(&rec, 100);
        ring.push(rec.last_ns, 0, rec.direction, rec.verdict, 154, &frame);
        *seq += 1;
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(500) || log.counters().io_errors < 3 {
        write(&mut seq, &mut ring);
        std::thread::sleep(Duration::from_micros(200));
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no I/O error on a full disk"
        );
    }
    say(&format!(
        "full {}",
        serde_json::to_string(&log.counters()).expect("json")
    ));
    std::fs::remove_file(&filler).expect("remove the filler");
    for _ in 0..100 {
        write(&mut seq, &mut ring);
    }
    let appended = log.counters().appended;
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.counters().durable + log.counters().discarded < appended && Instant::now() < deadline
    {
        log.flush(Duration::from_secs(1));
    }
    say(&format!(
        "freed {}",
        serde_json::to_string(&log.counters()).expect("json")
    ));
}

/// Write zeros to `path` until the filesystem is full.
fn fill_disk(path: &PathBuf) {
    let mut f = std::fs::File::create(path).expect("create the filler");
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling the disk: {e}"),
        }
    }
    let _ = f.write(&block[..1024]);
    let _ = f.write(&block[..1]);
}
