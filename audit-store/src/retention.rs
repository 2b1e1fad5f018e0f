//! Retention: whole sealed segments are deleted once their last write is older than the
//! maximum age, then the oldest go until the directory is under its size cap.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::error::{AuditError, Result};
use super::segment::{self, Segment};

/// How long and how much to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Segments whose last write is older are deleted.
    pub max_age: Duration,
    /// The oldest segments are deleted while the sliver's log is larger.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_bytes: 4 << 30,
        }
    }
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    /// Segments deleted.
    pub segments: u64,
    /// Their bytes (log and index).
    pub bytes: u64,
}

/// Apply `keep` to the segments of `dir` as of `now`, sparing `active` (the one being written).
pub fn apply(
    dir: &Path,
    keep: &Retention,
    now: SystemTime,
    active: Option<&Path>,
) -> Result<RetentionReport> {
    let mut segs = Vec::new();
    for seg in segment::list(dir)? {
        if Some(seg.path.as_path()) == active {
            continue;
        }
        let meta = fs::metadata(&seg.path).map_err(|e| AuditError::io(&seg.path, e))?;
        let idx_len = seg
            .index
            .as_ref()
            .and_then(|i| fs::metadata(&i.path).ok())
            .map_or(0, |m| m.len());
        let modified = meta.modified().map_err(|e| AuditError::io(&seg.path, e))?;
        segs.push((seg, meta.len() + idx_len, modified));
    }
    let active_len = active
        .and_then(|p| fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    let mut total: u64 = segs.iter().map(|s| s.1).sum::<u64>() + active_len;
    let mut report = RetentionReport::default();
    for (seg, len, modified) in segs {
        let too_old = now
            .duration_since(modified)
            .is_ok_and(|age| age > keep.max_age);
        if too_old || total > keep.max_bytes {
            remove(&seg)?;
            total -= len;
            report.segments += 1;
            report.bytes += len;
        }
    }
    if report.segments > 0 {
        segment::remove_empty_days(dir);
    }
    Ok(report)
}

/// Delete the index first: a crash in between leaves a segment without an index, which
/// recovery re-indexes, never an index without its segment being used.
fn remove(seg: &Segment) -> Result<()> {
    if let Some(idx) = &seg.index {
        match fs::remove_file(&idx.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(AuditError::io(&idx.path, e)),
        }
    }
    if let Some(span) = &seg.span {
        let _ = fs::remove_file(span);
    }
    fs::remove_file(&seg.path).map_err(|e| AuditError::io(&seg.path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn make(dir: &Path, created: u64, len: usize, age: Duration, now: SystemTime) -> Segment {
        let seg = Segment::new(dir, created);
        std::fs::create_dir_all(seg.dir()).expect("day dir");
        fs::write(&seg.path, vec![0u8; len]).expect("write");
        fs::write(seg.index_path(0, 1), b"i").expect("write");
        let f = fs::File::options()
            .write(true)
            .open(&seg.path)
            .expect("open");
        f.set_modified(now - age).expect("set mtime");
        seg
    }

    #[test]
    fn old_segments_go_then_the_oldest_until_under_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = SystemTime::now();
        let old = make(dir.path(), 1, 100, 31 * DAY, now);
        let a = make(dir.path(), 2, 100, 10 * DAY, now);
        let b = make(dir.path(), 3, 100, 5 * DAY, now);
        let active = make(dir.path(), 4, 100, Duration::ZERO, now);
        let keep = Retention {
            max_age: 30 * DAY,
            max_bytes: 250,
        };
        let r = apply(dir.path(), &keep, now, Some(&active.path)).expect("apply");
        assert_eq!(r.segments, 2);
        assert_eq!(r.bytes, 202);
        assert!(!old.path.exists() && !old.index_path(0, 1).exists());
        assert!(!a.path.exists());
        assert!(b.path.exists() && active.path.exists());
        let r = apply(dir.path(), &Retention::default(), now, None).expect("apply");
        assert_eq!(r, RetentionReport::default());
    }
}
