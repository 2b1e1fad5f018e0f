//! The writer thread: collects queued records for one commit interval (or until
//! `commit_bytes` are waiting), then writes them with one `pwrite` and one `fdatasync` (group
//! commit), rolls and seals segments, and applies
//! retention. Disk errors (ENOSPC, EIO) are logged and counted; the records stay pending and
//! are retried at the next interval, so the VMM never stops for a disk.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::error::{AuditError, Result};
use super::index::{self, IndexBuilder, IndexKey};
use super::retention;
use super::segment::{day_name, now_ns, Segment, MAX_SEGMENT_AGE};
use super::span::SpanWriter;
use super::writer::{AuditConfig, Entry, Msg, Shared};

/// The segment being written.
struct Open {
    seg: Segment,
    file: File,
    len: u64,
    index: IndexBuilder,
    opened: Instant,
    span: Option<SpanWriter>,
}

pub(crate) struct Committer {
    dir: PathBuf,
    config: AuditConfig,
    shared: Arc<Shared>,
    open: Option<Open>,
    /// Encoded, not yet durable records, in sequence order.
    pending: Vec<u8>,
    pending_keys: Vec<(IndexKey, usize)>,
    last_created: u64,
    failing: bool,
}

impl Committer {
    pub(crate) fn new(dir: PathBuf, config: AuditConfig, shared: Arc<Shared>) -> Self {
        Committer {
            dir,
            config,
            shared,
            open: None,
            pending: Vec::new(),
            pending_keys: Vec::new(),
            last_created: 0,
            failing: false,
        }
    }

    pub(crate) fn run(mut self, rx: Receiver<Msg>) {
        self.expire();
        let mut next_commit = Instant::now() + self.config.commit_interval;
        loop {
            let wait = next_commit.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(Msg::Record(entry)) => {
                    self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                    self.take(entry);
                    if self.pending.len() >= self.config.commit_bytes && !self.failing {
                        self.commit();
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    self.commit();
                    let _ = ack.send(());
                }
                Ok(Msg::Populate(range)) => range.run(),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            // Checked after every message too: a steady stream never lets recv time out.
            if Instant::now() >= next_commit {
                self.commit();
                next_commit = Instant::now() + self.config.commit_interval;
            }
        }
        self.commit();
        self.seal();
    }

    fn take(&mut self, entry: Entry) {
        if self.pending.len() + entry.frame.len() > self.config.max_pending_bytes {
            self.shared
                .counters
                .discarded
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.pending.extend_from_slice(&entry.frame);
        self.pending_keys.push((entry.key, entry.frame.len()));
    }

    /// Write and sync the pending records; on failure keep them for the next try.
    fn commit(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        match self.try_commit() {
            Ok(()) => {
                let n = self.pending_keys.len() as u64;
                let last = self.pending_keys.last().map_or(0, |(k, _)| k.seq);
                self.pending.clear();
                self.pending_keys.clear();
                self.shared.counters.durable.fetch_add(n, Ordering::Relaxed);
                self.shared.counters.commits.fetch_add(1, Ordering::Relaxed);
                let mut d = self
                    .shared
                    .durable_seq
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                *d = (*d).max(last);
                drop(d);
                self.shared.durable_cv.notify_all();
                if self.failing {
                    log::info!("{}: audit log writes again", self.dir.display());
                    self.failing = false;
                }
            }
            Err(e) => {
                self.shared
                    .counters
                    .io_errors
                    .fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    log::error!(
                        "{e}; audit records are kept in memory (up to {} bytes) and retried",
                        self.config.max_pending_bytes
                    );
                    self.failing = true;
                }
            }
        }
    }

    fn try_commit(&mut self) -> Result<()> {
        // A segment's day directory is the day of its records' last packets: a batch goes
        // into a segment of the day its earliest last packet falls on, and a batch reaching
        // into another day gets a segment of its own (see `segment::scan_window`).
        let days = self
            .pending_keys
            .iter()
            .map(|(k, _)| k.last_ns)
            .min()
            .zip(self.pending_keys.iter().map(|(k, _)| k.last_ns).max())
            .map(|(lo, hi)| (day_name(lo), day_name(hi)));
        let roll = self.open.as_ref().is_some_and(|o| {
            o.len >= self.config.segment_bytes
                || o.opened.elapsed() >= self.config.segment_age.min(MAX_SEGMENT_AGE)
                || days
                    .as_ref()
                    .is_some_and(|(lo, hi)| lo != hi || o.seg.day() != Some(lo.as_str()))
        });
        if roll {
            self.seal();
        }
        if self.open.is_none() {
            let day_ns = self.pending_keys.iter().map(|(k, _)| k.last_ns).min();
            self.open = Some(self.create(day_ns)?);
        }
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        // Widen the span before the data lands, so a reader never finds records outside it.
        let min_first = self.pending_keys.iter().map(|(k, _)| k.first_ns).min();
        let max_last = self.pending_keys.iter().map(|(k, _)| k.last_ns).max();
        if let (Some(lo), Some(hi), Some(span)) = (min_first, max_last, open.span.as_mut()) {
            if !span.widen(lo, hi) {
                open.span = None;
            }
        }
        let path = &open.seg.path;
        if let Err(e) = open.file.write_all_at(&self.pending, open.len) {
            // Cut off whatever part was written, so the retry lands right after the last
            // good record; if even that fails, the reader's resync skips the debris.
            let _ = open.file.set_len(open.len);
            return Err(AuditError::io(path, e));
        }
        if let Err(e) = open.file.sync_data() {
            // After a failed fsync the page cache may have dropped the data: cut the batch
            // off, seal this segment and write the batch again into a new one. (Should the
            // cut fail too, the query drops the duplicate `(sliver, seq)`.)
            let err = AuditError::io(path, e);
            let _ = open.file.set_len(open.len);
            self.seal();
            return Err(err);
        }
        let mut offset = open.len;
        for (key, len) in &self.pending_keys {
            open.index.add(key, offset, *len);
            offset += *len as u64;
        }
        open.len = offset;
        Ok(())
    }

    /// A new segment, in the day directory of `day_ns` (its first records' earliest last
    /// packet; none: the creation time's).
    fn create(&mut self, day_ns: Option<u64>) -> Result<Open> {
        self.expire();
        let created = now_ns().max(self.last_created + 1);
        let seg = Segment::in_day(&self.dir, day_ns.unwrap_or(created), created);
        let day = seg.dir().to_path_buf();
        if !day.is_dir() {
            std::fs::create_dir_all(&day).map_err(|e| AuditError::io(&day, e))?;
            // The new day directory's name must be durable before anything in it.
            sync_dir(&self.dir)?;
        }
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&seg.path)
            .map_err(|e| AuditError::io(&seg.path, e))?;
        // Make the new name durable too.
        sync_dir(&day)?;
        self.last_created = created;
        let span = SpanWriter::create(&seg);
        Ok(Open {
            seg,
            file,
            len: 0,
            index: IndexBuilder::default(),
            opened: Instant::now(),
            span,
        })
    }

    /// Close the open segment and write its index (an empty segment is removed).
    fn seal(&mut self) {
        let Some(open) = self.open.take() else { return };
        if open.len == 0 {
            if let Some(span) = open.span {
                span.remove();
            }
            let _ = std::fs::remove_file(&open.seg.path);
            return;
        }
        match index::save(&open.seg, &open.index.finish()) {
            Ok(_) => {
                if let Some(span) = open.span {
                    span.remove();
                }
            }
            Err(e) => {
                // Recovery re-indexes a segment without an index; nothing is lost. (Its span
                // stays, still true, for queries until then.)
                self.shared
                    .counters
                    .io_errors
                    .fetch_add(1, Ordering::Relaxed);
                log::error!("{e}");
            }
        }
    }

    fn expire(&mut self) {
        let keep = self.config.retention;
        match retention::apply(&self.dir, &keep, SystemTime::now(), None) {
            Ok(r) if r.segments > 0 => {
                let c = &self.shared.counters;
                c.segments_expired.fetch_add(r.segments, Ordering::Relaxed);
                log::info!(
                    "{}: retention deleted {} segments ({} bytes)",
                    self.dir.display(),
                    r.segments,
                    r.bytes
                );
            }
            Ok(_) => {}
            Err(e) => {
                self.shared
                    .counters
                    .io_errors
                    .fetch_add(1, Ordering::Relaxed);
                log::error!("retention: {e}");
            }
        }
    }
}

/// fsync directory `dir`, so that names created in it survive a crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io(dir, e))
}
