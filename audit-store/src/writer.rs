//! The per-sliver log writer: [`AuditLog::append`] encodes a record and hands it to a bounded
//! queue without ever waiting for the disk (a full queue drops and counts); a background
//! thread writes and `fdatasync`s the queue every commit interval (group commit). The queue
//! takes memory as records wait in it, not for its bound up front (a channel preallocated
//! for 65 536 records held 6 MiB in every VMM).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::codec;
use super::committer::Committer;
use super::error::{AuditError, Result};
use super::index::IndexKey;
use super::lock::lock_exclusive;
use super::log_counters::{CounterSnapshot, Counters};
use super::record::FlowRecord;
use super::recovery::{self, RecoveryReport};
use super::retention::Retention;

/// How a sliver's log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Group commit: queued records are written and synced this often...
    pub commit_interval: Duration,
    /// ...or as soon as this many bytes are waiting.
    pub commit_bytes: usize,
    /// Records the queue holds; beyond, `append` drops and counts.
    pub queue_records: usize,
    /// Bytes kept in memory while the disk refuses writes; beyond, records are dropped.
    pub max_pending_bytes: usize,
    /// A segment is sealed once it is this large...
    pub segment_bytes: u64,
    /// ...or this old.
    pub segment_age: Duration,
    /// What to keep.
    pub retention: Retention,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            commit_interval: Duration::from_secs(1),
            commit_bytes: 4 << 20,
            queue_records: 1 << 16,
            max_pending_bytes: 16 << 20,
            segment_bytes: 16 << 20,
            segment_age: Duration::from_secs(600),
            retention: Retention::default(),
        }
    }
}

/// Why a record was not queued.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The queue is full (the disk is slow or failing); the record is counted as dropped.
    #[error("audit queue full: record dropped")]
    QueueFull,
    /// The writer thread is gone.
    #[error("audit writer stopped")]
    Closed,
    /// The record cannot be encoded.
    #[error(transparent)]
    Invalid(#[from] AuditError),
}

/// State shared with the writer thread.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) counters: Counters,
    /// Records sent to the writer thread and not yet taken by it (the queue's fill).
    pub(crate) queued: AtomicUsize,
    /// The writer thread has ended (a panic included): appends report
    /// [`AppendError::Closed`], not a queue that stays full.
    pub(crate) stopped: AtomicBool,
    pub(crate) durable_seq: Mutex<u64>,
    pub(crate) durable_cv: Condvar,
}

/// One encoded record on its way to disk.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) key: IndexKey,
    pub(crate) frame: Vec<u8>,
}

pub(crate) enum Msg {
    Record(Entry),
    Flush(SyncSender<()>),
    Populate(crate::capture::Populate),
}

/// The writer of one sliver's audit log directory.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<Sender<Msg>>,
    /// The queue's bound, [`AuditConfig::queue_records`].
    queue_records: usize,
    shared: Arc<Shared>,
    next_seq: AtomicU64,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
    _lock: File,
}

impl AuditLog {
    /// Lock `dir` (created if needed), recover it, and start the writer thread.
    pub fn open(dir: &Path, config: AuditConfig) -> Result<(AuditLog, RecoveryReport)> {
        Self::open_with(dir, config, || {})
    }

    /// [`AuditLog::open`], with `on_start` called first thing on the writer thread (the VMM
    /// installs the thread's seccomp filter there).
    pub fn open_with(
        dir: &Path,
        config: AuditConfig,
        on_start: fn(),
    ) -> Result<(AuditLog, RecoveryReport)> {
        std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let report = recovery::recover(dir)?;
        let shared = Arc::new(Shared::default());
        *shared.durable_seq.lock().unwrap_or_else(|p| p.into_inner()) = report.next_seq - 1;
        let (tx, rx) = mpsc::channel();
        let committer = Committer::new(dir.to_path_buf(), config, Arc::clone(&shared));
        let stopped = StopMark(Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let _stopped = stopped;
                on_start();
                committer.run(rx)
            })
            .map_err(|e| AuditError::io(dir, e))?;
        let log = AuditLog {
            tx: Some(tx),
            queue_records: config.queue_records.max(1),
            shared,
            next_seq: AtomicU64::new(report.next_seq),
            thread: Some(thread),
            dir: dir.to_path_buf(),
            _lock: lock,
        };
        Ok((log, report))
    }

    /// Queue `rec` (its `seq` is ignored) and return the sequence number it was given. Never
    /// waits for the disk: a full queue drops the record and counts it.
    pub fn append(&self, rec: &FlowRecord) -> std::result::Result<u64, AppendError> {
        let counters = &self.shared.counters;
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(128);
        if let Err(e) = codec::encode_with_seq(rec, seq, &mut frame) {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(e.into());
        }
        let key = IndexKey {
            seq,
            ..IndexKey::of(rec)
        };
        let Some(tx) = &self.tx else {
            return Err(AppendError::Closed);
        };
        if self.shared.stopped.load(Ordering::Relaxed) {
            return Err(AppendError::Closed);
        }
        let queued = &self.shared.queued;
        let bound = self.queue_records;
        if queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < bound).then_some(n + 1)
            })
            .is_err()
        {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(AppendError::QueueFull);
        }
        if tx.send(Msg::Record(Entry { key, frame })).is_err() {
            queued.fetch_sub(1, Ordering::Relaxed);
            return Err(AppendError::Closed);
        }
        counters.appended.fetch_add(1, Ordering::Relaxed);
        Ok(seq)
    }

    /// Fault in `range` of a capture ring on the writer thread, off the packet path
    /// ([`crate::capture::CaptureRing::push`] hands these out). Never waits; after the log is
    /// closed it does nothing.
    pub fn populate(&self, range: crate::capture::Populate) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Populate(range));
        }
    }

    /// Write and sync everything queued so far, waiting at most `timeout`; returns the durable
    /// sequence number afterwards (which stays behind if the disk refuses).
    pub fn flush(&self, timeout: Duration) -> u64 {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Flush(ack_tx)).is_ok() {
                let _ = ack_rx.recv_timeout(timeout);
            }
        }
        self.durable_seq()
    }

    /// Every record queued with a sequence number up to this one is on disk.
    pub fn durable_seq(&self) -> u64 {
        *self
            .shared
            .durable_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Wait until the durable sequence number changes from `seen` or `timeout` passes.
    pub fn wait_durable(&self, seen: u64, timeout: Duration) -> u64 {
        let guard = self
            .shared
            .durable_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .shared
            .durable_cv
            .wait_timeout_while(guard, timeout, |d| *d == seen)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }

    /// The counters now.
    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.shared.counters;
        CounterSnapshot {
            appended: c.appended.load(Ordering::Relaxed),
            durable: c.durable.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            io_errors: c.io_errors.load(Ordering::Relaxed),
            segments_expired: c.segments_expired.load(Ordering::Relaxed),
            durable_seq: self.durable_seq(),
        }
    }

    /// The directory written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Marks the writer thread stopped when dropped: when it returns or unwinds.
struct StopMark(Arc<Shared>);

impl Drop for StopMark {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Relaxed);
    }
}

impl Drop for AuditLog {
    /// Stop the writer: it commits what is queued and seals the segment.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("{}: audit writer thread panicked", self.dir.display());
            }
        }
    }
}

/// Whether some process holds the writer lock of the log in `dir` (a running VMM). Read from
/// `/proc/locks`, so asking takes no lock and cannot make a starting writer fail.
pub fn has_writer(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir.join("LOCK")) else {
        return false;
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return false;
    };
    // Lines like "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF": the sixth field is
    // MAJOR:MINOR:INODE (device numbers in hex).
    let dev = meta.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&want.as_str())
    })
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AuditError::io(&path, e))?;
    lock_exclusive(&file, &path, dir)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{reader, segment, synth};

    /// A writer thread that takes its two records' worth of queue and then dies.
    fn die_after_a_while() {
        std::thread::sleep(Duration::from_millis(200));
        panic!("the writer thread dies (on purpose, for the test)");
    }

    #[test]
    fn after_the_writer_thread_dies_appends_say_closed_even_with_a_full_queue() {
        let dir = tempfile::tempdir().expect("tmp");
        let config = AuditConfig {
            queue_records: 2,
            ..AuditConfig::default()
        };
        let (log, _) = AuditLog::open_with(dir.path(), config, die_after_a_while).expect("open");
        for i in 0..2 {
            log.append(&synth::flow(i, "s", 1_000 + i)).expect("queued");
        }
        std::thread::sleep(Duration::from_millis(600));
        for i in 2..5 {
            let e = log
                .append(&synth::flow(i, "s", 1_000 + i))
                .expect_err("no writer");
            assert!(matches!(e, AppendError::Closed), "{e}");
        }
    }

    #[test]
    fn a_held_writer_lock_is_seen_without_taking_it() {
        let dir = tempfile::tempdir().expect("tmp");
        assert!(!has_writer(dir.path()), "no log yet");
        let (log, _) = AuditLog::open(dir.path(), AuditConfig::default()).expect("open");
        assert!(has_writer(dir.path()));
        drop(log);
        assert!(!has_writer(dir.path()), "released");
    }

    fn read_seqs(dir: &Path) -> Vec<u64> {
        let mut seqs = Vec::new();
        reader::for_each_in_dir(dir, |r| {
            seqs.push(r.seq);
            true
        })
        .expect("read");
        seqs
    }

    #[test]
    fn appended_records_become_durable_and_numbering_continues_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig {
            commit_interval: Duration::from_millis(20),
            segment_bytes: 4096,
            ..AuditConfig::default()
        };
        let (log, report) = AuditLog::open(dir.path(), config).expect("open");
        assert_eq!(report.next_seq, 1);
        for i in 0..300 {
            let seq = log.append(&synth::flow(i, "s", 1_000 + i)).expect("append");
            assert_eq!(seq, i + 1);
            if i % 100 == 99 {
                // A commit never splits; segments roll between commits.
                assert_eq!(log.flush(Duration::from_secs(5)), i + 1);
            }
        }
        let c = log.counters();
        assert_eq!(
            (c.appended, c.durable, c.dropped, c.io_errors),
            (300, 300, 0, 0)
        );
        assert!(matches!(
            AuditLog::open(dir.path(), config),
            Err(AuditError::Locked { .. })
        ));
        drop(log);
        let segs = segment::list(dir.path()).expect("list");
        assert!(segs.len() > 1, "rolled by size");
        assert!(
            segs.iter().all(|s| s.index.is_some() && s.span.is_none()),
            "a clean close indexes every segment and removes the span file"
        );
        let (log, report) = AuditLog::open(dir.path(), config).expect("reopen");
        assert_eq!(
            report.segments_scanned, 0,
            "a clean close leaves every segment indexed"
        );
        assert_eq!(report.next_seq, 301);
        log.append(&synth::flow(7, "s", 5)).expect("append");
        drop(log);
        assert_eq!(read_seqs(dir.path()), (1..=301).collect::<Vec<_>>());
    }

    #[test]
    fn a_large_backlog_commits_before_the_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig {
            commit_interval: Duration::from_secs(3600),
            commit_bytes: 1024,
            ..AuditConfig::default()
        };
        let (log, _) = AuditLog::open(dir.path(), config).expect("open");
        for i in 0..100 {
            log.append(&synth::flow(i, "s", 1_000 + i)).expect("append");
        }
        let mut durable = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while durable < 90 && std::time::Instant::now() < deadline {
            durable = log.wait_durable(durable, Duration::from_secs(1));
        }
        assert!(durable >= 90, "only {durable} durable without a flush");
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig {
            commit_interval: Duration::from_secs(3600),
            queue_records: 4,
            max_pending_bytes: 300,
            ..AuditConfig::default()
        };
        let (log, _) = AuditLog::open(dir.path(), config).expect("open");
        let start = std::time::Instant::now();
        let results: Vec<bool> = (0..10_000)
            .map(|i| log.append(&synth::flow(i, "s", 1)).is_ok())
            .collect();
        assert!(start.elapsed() < Duration::from_secs(2));
        let ok = results.iter().filter(|ok| **ok).count() as u64;
        let queue_drops = 10_000 - ok;
        assert!(queue_drops > 0);
        assert_eq!(log.counters().appended, ok);
        log.flush(Duration::from_secs(5));
        let c = log.counters();
        assert!(c.durable > 0 && c.durable <= 4, "{c:?}");
        assert_eq!(c.dropped, queue_drops);
        assert_eq!(c.durable + c.discarded, ok, "{c:?}");
    }

    /// This process's resident anonymous memory, KiB (not the files other tests map).
    fn rss_anon_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .expect("status")
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("RssAnon")
    }

    #[test]
    fn the_queue_takes_memory_as_it_fills_not_for_its_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig {
            commit_interval: Duration::from_secs(3600),
            queue_records: 1 << 22,
            ..AuditConfig::default()
        };
        let before = rss_anon_kib();
        let (log, _) = AuditLog::open(dir.path(), config).expect("open");
        // A channel built for its bound would have touched 4 Mi slots (~400 MiB) by now.
        let grown = rss_anon_kib().saturating_sub(before);
        assert!(grown < 64 << 10, "opening the log took {grown} KiB");
        for i in 0..1_000 {
            log.append(&synth::flow(i, "s", 1)).expect("queued");
        }
        assert_eq!(log.flush(Duration::from_secs(5)), 1_000);
    }

    #[test]
    fn a_saturated_queue_is_still_committed_every_interval() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuditConfig {
            commit_interval: Duration::from_millis(20),
            commit_bytes: usize::MAX,
            max_pending_bytes: 64 << 20,
            queue_records: 64,
            ..AuditConfig::default()
        };
        let (log, _) = AuditLog::open(dir.path(), config).expect("open");
        // Four threads append flat out for 300 ms, so the writer always finds a record waiting
        // and its receive never times out; records must still become durable on the interval.
        let durable_midway = std::thread::scope(|s| {
            for t in 0..4u64 {
                let log = &log;
                s.spawn(move || {
                    let start = std::time::Instant::now();
                    let mut i = t;
                    while start.elapsed() < Duration::from_millis(300) {
                        let _ = log.append(&synth::flow(i, "s", 1_000 + i));
                        i += 4;
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(200));
            log.durable_seq()
        });
        assert!(log.counters().dropped > 0, "the queue was saturated");
        assert!(
            durable_midway > 0,
            "nothing durable after 200 ms of a saturated queue"
        );
    }
}
