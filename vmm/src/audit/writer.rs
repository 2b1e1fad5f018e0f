//! The per-sliver log writer: [`AuditLog::append`] encodes a record and hands it to a bounded
//! queue without ever waiting for the disk (a full queue drops and counts); a background
//! thread writes and `fdatasync`s the queue every commit interval (group commit).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::codec;
use super::committer::Committer;
use super::counters::{CounterSnapshot, Counters};
use super::error::{AuditError, Result};
use super::index::IndexKey;
use super::lock::lock_exclusive;
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
}

/// The writer of one sliver's audit log directory.
#[derive(Debug)]
pub struct AuditLog {
    tx: Option<SyncSender<Msg>>,
    shared: Arc<Shared>,
    next_seq: AtomicU64,
    thread: Option<JoinHandle<()>>,
    dir: PathBuf,
    _lock: File,
}

impl AuditLog {
    /// Lock `dir` (created if needed), recover it, and start the writer thread.
    pub fn open(dir: &Path, config: AuditConfig) -> Result<(AuditLog, RecoveryReport)> {
        std::fs::create_dir_all(dir).map_err(|e| AuditError::io(dir, e))?;
        let lock = lock_dir(dir)?;
        let report = recovery::recover(dir)?;
        let shared = Arc::new(Shared::default());
        *shared.durable_seq.lock().unwrap_or_else(|p| p.into_inner()) = report.next_seq - 1;
        let (tx, rx) = mpsc::sync_channel(config.queue_records.max(1));
        let committer = Committer::new(dir.to_path_buf(), config, Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| AuditError::io(dir, e))?;
        let log = AuditLog {
            tx: Some(tx),
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
        match tx.try_send(Msg::Record(Entry { key, frame })) {
            Ok(()) => {
                counters.appended.fetch_add(1, Ordering::Relaxed);
                Ok(seq)
            }
            Err(TrySendError::Full(_)) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                Err(AppendError::QueueFull)
            }
            Err(TrySendError::Disconnected(_)) => Err(AppendError::Closed),
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
#[path = "writer_tests.rs"]
mod tests;
