//! Recovery when a writer opens a sliver's log: every segment without a valid index (the one
//! being written when the writer died) is scanned, its torn tail truncated, damaged records
//! reported and skipped, and its index written; empty segments are removed.

use std::fs::{self, OpenOptions};
use std::path::Path;

use serde::Serialize;

use super::error::{AuditError, Result};
use super::index::{self, IndexBuilder, IndexKey};
use super::reader;
use super::segment::{self, Segment};

/// What recovery found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Segments that had no valid index and were scanned.
    pub segments_scanned: u64,
    /// Valid records in the scanned segments.
    pub records_scanned: u64,
    /// Bytes of torn tail truncated.
    pub torn_bytes_trimmed: u64,
    /// Damaged records (ranges) skipped, left in place.
    pub corrupt_records: u64,
    /// Empty segments removed.
    pub empty_segments_removed: u64,
    /// The sequence number the writer continues with.
    pub next_seq: u64,
}

/// Recover the log in `dir` (which the caller holds the lock of).
pub fn recover(dir: &Path) -> Result<RecoveryReport> {
    let mut report = RecoveryReport::default();
    let (segs, junk) = segment::scan_dir(dir)?;
    for path in junk {
        fs::remove_file(&path).map_err(|e| AuditError::io(&path, e))?;
    }
    let mut max_seq = 0u64;
    for seg in segs {
        // Only a live writer keeps a span; this segment is indexed below (or already was).
        if let Some(span) = &seg.span {
            fs::remove_file(span).map_err(|e| AuditError::io(span, e))?;
        }
        let seg_max = match seg.index.as_ref().and_then(index::open) {
            Some(idx) => idx.max_seq(),
            None => {
                if let Some(bad) = &seg.index {
                    log::warn!("{}: damaged index, rebuilding it", bad.path.display());
                    fs::remove_file(&bad.path).map_err(|e| AuditError::io(&bad.path, e))?;
                }
                recover_segment(&seg, &mut report)?
            }
        };
        max_seq = max_seq.max(seg_max);
    }
    report.next_seq = max_seq + 1;
    Ok(report)
}

/// Scan one unindexed segment; returns its highest sequence number.
fn recover_segment(seg: &Segment, report: &mut RecoveryReport) -> Result<u64> {
    let path = &seg.path;
    let buf = fs::read(path).map_err(|e| AuditError::io(path, e))?;
    let mut builder = IndexBuilder::default();
    let mut max_seq = 0;
    let scan = reader::scan(&buf, 0, |rec, offset, len| {
        max_seq = max_seq.max(rec.seq);
        builder.add(&IndexKey::of(&rec), offset, len);
    });
    report.segments_scanned += 1;
    report.records_scanned += scan.records;
    report.corrupt_records += scan.corrupt.len() as u64;
    reader::log_damage(path, &scan);
    if scan.records == 0 {
        fs::remove_file(path).map_err(|e| AuditError::io(path, e))?;
        report.empty_segments_removed += 1;
        report.torn_bytes_trimmed += scan.torn_tail;
        return Ok(0);
    }
    if scan.torn_tail > 0 {
        log::warn!(
            "{}: trimmed a torn tail of {} bytes after byte {}",
            path.display(),
            scan.torn_tail,
            scan.valid_end
        );
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        f.set_len(scan.valid_end)
            .and_then(|()| f.sync_data())
            .map_err(|e| AuditError::io(path, e))?;
        report.torn_bytes_trimmed += scan.torn_tail;
    }
    index::save(seg, &builder.finish())?;
    Ok(max_seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec, synth};

    fn write_segment(dir: &Path, created: u64, seqs: std::ops::Range<u64>) -> (Segment, Vec<u8>) {
        let seg = Segment::new(dir, created);
        std::fs::create_dir_all(seg.dir()).expect("day dir");
        let mut buf = Vec::new();
        for seq in seqs {
            codec::encode(&synth::flow(seq, "s", 1_000 + seq), &mut buf).expect("encode");
        }
        fs::write(&seg.path, &buf).expect("write");
        (seg, buf)
    }

    #[test]
    fn torn_tail_is_trimmed_and_the_index_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sealed, _) = write_segment(dir.path(), 1, 1..50);
        recover(dir.path()).expect("first recovery indexes it");
        let (seg, mut buf) = write_segment(dir.path(), 2, 50..100);
        let good = buf.len() as u64;
        let mut torn = Vec::new();
        codec::encode(&synth::flow(100, "s", 5), &mut torn).expect("encode");
        buf.extend_from_slice(&torn[..torn.len() / 2]);
        fs::write(&seg.path, &buf).expect("write");
        let r = recover(dir.path()).expect("recover");
        assert_eq!(
            r.segments_scanned, 1,
            "the indexed segment is not rescanned"
        );
        assert_eq!(r.records_scanned, 50);
        assert_eq!(r.torn_bytes_trimmed, (torn.len() / 2) as u64);
        assert_eq!(r.corrupt_records, 0);
        assert_eq!(r.next_seq, 100);
        assert_eq!(fs::metadata(&seg.path).expect("stat").len(), good);
        for s in [&seg, &sealed] {
            let s = segment::list(dir.path())
                .expect("list")
                .into_iter()
                .find(|x| x.created_ns == s.created_ns)
                .expect("segment");
            assert!(s.index.as_ref().and_then(index::open).is_some());
        }
        let again = recover(dir.path()).expect("recover again");
        assert_eq!((again.segments_scanned, again.next_seq), (0, 100));
    }

    #[test]
    fn corruption_is_reported_and_skipped_and_empty_segments_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, mut buf) = write_segment(dir.path(), 1, 1..20);
        assert!(seg.path.exists());
        buf[200] ^= 0x55;
        fs::write(&seg.path, &buf).expect("write");
        let (empty, _) = write_segment(dir.path(), 2, 0..0);
        fs::write(&empty.path, b"SVA").expect("write");
        let r = recover(dir.path()).expect("recover");
        assert_eq!(r.corrupt_records, 1);
        assert_eq!(r.records_scanned, 18);
        assert_eq!(r.empty_segments_removed, 1);
        assert_eq!(r.next_seq, 20);
        assert!(!empty.path.exists());
        let segs = segment::list(dir.path()).expect("list");
        assert_eq!(segs.len(), 1);
        let idx = segs[0].index.as_ref().and_then(index::open).expect("index");
        let blocks = idx.blocks;
        assert_eq!(blocks.iter().map(|b| b.count).sum::<u32>(), 18);
        assert!(blocks.len() >= 2, "the damaged range splits the blocks");
    }
}
