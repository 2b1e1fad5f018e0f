//! The time span of the segment being written, `seg-<created>.span`: 16 bytes (earliest first
//! packet, latest last packet, u64 LE), widened by the writer *before* each batch is written.
//! A query can then skip a live sliver's open segment (which has no index yet) whose span
//! misses its window instead of reading up to 16 MiB. Not synced: recovery deletes it and
//! indexes the segment; a missing or unreadable span just means "read the segment".

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::segment::Segment;

/// Writes the span of one open segment.
#[derive(Debug)]
pub struct SpanWriter {
    file: File,
    path: PathBuf,
    min_first: u64,
    max_last: u64,
}

fn encode(min_first: u64, max_last: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&min_first.to_le_bytes());
    b[8..].copy_from_slice(&max_last.to_le_bytes());
    b
}

impl SpanWriter {
    /// Create the span file of `seg`, empty (it overlaps nothing); `None` if that fails, and
    /// then the segment is read whole by queries until it is sealed.
    pub fn create(seg: &Segment) -> Option<Self> {
        let path = seg.span_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .ok()?;
        // The 16 bytes exist from now on, so later updates overwrite them in place and need
        // no new space on a full disk.
        if file.write_all_at(&encode(u64::MAX, 0), 0).is_err() {
            let _ = fs::remove_file(&path);
            return None;
        }
        Some(SpanWriter {
            file,
            path,
            min_first: u64::MAX,
            max_last: 0,
        })
    }

    /// Widen the span to cover `[min_first, max_last]`. If the file cannot be updated it is
    /// removed (a stale span would hide records) and `false` is returned: drop the writer.
    pub fn widen(&mut self, min_first: u64, max_last: u64) -> bool {
        let (lo, hi) = (self.min_first.min(min_first), self.max_last.max(max_last));
        if (lo, hi) == (self.min_first, self.max_last) {
            return true;
        }
        if let Err(e) = self.file.write_all_at(&encode(lo, hi), 0) {
            log::warn!("{}: {e}; removing it", self.path.display());
            if let Err(e) = fs::remove_file(&self.path) {
                log::error!("{}: stale span not removed: {e}", self.path.display());
            }
            return false;
        }
        (self.min_first, self.max_last) = (lo, hi);
        true
    }

    /// Remove the file (the segment is sealed and indexed).
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The span in the file at `path`, if readable.
pub fn read(path: &Path) -> Option<(u64, u64)> {
    let b = fs::read(path).ok()?;
    let b: [u8; 16] = b.as_slice().try_into().ok()?;
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    Some((u64::from_le_bytes(lo), u64::from_le_bytes(hi)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_starts_empty_and_only_widens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = Segment::new(dir.path(), 5);
        std::fs::create_dir_all(seg.dir()).expect("day dir");
        let mut w = SpanWriter::create(&seg).expect("create");
        assert_eq!(read(&seg.span_path()), Some((u64::MAX, 0)));
        assert!(w.widen(100, 200));
        assert!(w.widen(150, 180));
        assert_eq!(read(&seg.span_path()), Some((100, 200)));
        assert!(w.widen(50, 300));
        assert_eq!(read(&seg.span_path()), Some((50, 300)));
        w.remove();
        assert_eq!(read(&seg.span_path()), None);
    }
}
