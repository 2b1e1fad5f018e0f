//! Reading frames back: a scan that resynchronises on the magic word after a corrupted
//! record and tells a torn tail (no valid frame after it) from damage in the middle.

use std::fs;
use std::path::Path;

use super::codec::{self, FrameError, Peek};
use super::error::{AuditError, Result};
use super::record::FlowRecord;
use super::segment;

/// What a scan of a buffer found besides the records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Valid records.
    pub records: u64,
    /// Byte ranges (start, end) of damaged data skipped between valid records.
    pub corrupt: Vec<(u64, u64)>,
    /// End of the last valid frame.
    pub valid_end: u64,
    /// Bytes after `valid_end` with no valid frame (a torn tail when at the end of a file).
    pub torn_tail: u64,
}

/// Decode every frame of `buf` (found at file offset `base`), calling `each(record, offset,
/// frame length)`; damaged bytes are skipped up to the next frame that decodes.
pub fn scan(buf: &[u8], base: u64, each: impl FnMut(FlowRecord, u64, usize)) -> ScanReport {
    scan_if(buf, base, |_| true, each)
}

/// Like [`scan`], but records are built (and passed to `each`) only if `keep` accepts their
/// times and addresses; every frame is validated and counted either way.
pub fn scan_if(
    buf: &[u8],
    base: u64,
    mut keep: impl FnMut(&Peek) -> bool,
    mut each: impl FnMut(FlowRecord, u64, usize),
) -> ScanReport {
    let mut report = ScanReport {
        valid_end: base,
        ..ScanReport::default()
    };
    let mut pos = 0usize;
    while pos < buf.len() {
        match codec::decode_if(&buf[pos..], &mut keep) {
            Ok((rec, len)) => {
                if let Some(rec) = rec {
                    each(rec, base + pos as u64, len);
                }
                report.records += 1;
                pos += len;
                report.valid_end = base + pos as u64;
            }
            Err(FrameError::Truncated | FrameError::Corrupt) => match resync(buf, pos + 1) {
                Some(next) => {
                    report.corrupt.push((base + pos as u64, base + next as u64));
                    pos = next;
                }
                None => break,
            },
        }
    }
    report.torn_tail = base + buf.len() as u64 - report.valid_end;
    report
}

/// The offset of the next frame at or after `from` that decodes.
fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    loop {
        let m = codec::find_magic(buf, at)?;
        if codec::decode(&buf[m..]).is_ok() {
            return Some(m);
        }
        at = m + 1;
    }
}

/// Every record of a sliver directory, segment by segment, oldest first. Damaged records are
/// skipped and logged; `each` returns false to stop early.
pub fn for_each_in_dir(dir: &Path, mut each: impl FnMut(FlowRecord) -> bool) -> Result<()> {
    for seg in segment::list(dir)? {
        let buf = fs::read(&seg.path).map_err(|e| AuditError::io(&seg.path, e))?;
        let mut go = true;
        let report = scan(&buf, 0, |rec, _, _| {
            if go {
                go = each(rec);
            }
        });
        log_damage(&seg.path, &report);
        if !go {
            break;
        }
    }
    Ok(())
}

/// Every record under `STATE_DIR/audit/`, sliver by sliver.
pub fn for_each_in_state(state_dir: &Path, mut each: impl FnMut(FlowRecord) -> bool) -> Result<()> {
    for dir in segment::sliver_dirs(state_dir)? {
        let mut go = true;
        for_each_in_dir(&dir, |r| {
            go = each(r);
            go
        })?;
        if !go {
            break;
        }
    }
    Ok(())
}

/// Log the damaged ranges a scan of `path` skipped.
pub fn log_damage(path: &Path, report: &ScanReport) {
    for (start, end) in &report.corrupt {
        log::warn!(
            "{}: skipped a corrupted record at bytes {start}..{end}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    fn frames(n: u64) -> (Vec<u8>, Vec<usize>) {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for seq in 0..n {
            starts.push(buf.len());
            codec::encode(&synth::flow(seq, "s", 1_000 + seq), &mut buf).expect("encode");
        }
        (buf, starts)
    }

    #[test]
    fn a_corrupted_record_in_the_middle_is_skipped() {
        let (mut buf, starts) = frames(10);
        buf[starts[4] + 20] ^= 0xff;
        let mut seqs = Vec::new();
        let r = scan(&buf, 0, |rec, _, _| seqs.push(rec.seq));
        assert_eq!(seqs, [0, 1, 2, 3, 5, 6, 7, 8, 9]);
        assert_eq!(r.corrupt, [(starts[4] as u64, starts[5] as u64)]);
        assert_eq!(r.torn_tail, 0);
        assert_eq!(r.valid_end, buf.len() as u64);
    }

    #[test]
    fn a_torn_tail_is_measured_not_counted_as_corruption() {
        let (buf, starts) = frames(5);
        let cut = starts[4] + 9;
        let r = scan(&buf[..cut], 0, |_, _, _| {});
        assert_eq!(r.records, 4);
        assert!(r.corrupt.is_empty());
        assert_eq!(r.valid_end, starts[4] as u64);
        assert_eq!(r.torn_tail, 9);
    }

    #[test]
    fn garbage_between_records_is_one_damaged_range() {
        let (a, _) = frames(2);
        let mut buf = a.clone();
        buf.extend_from_slice(b"SVARgarbage-with-a-fake-magic");
        let garbage_end = buf.len();
        buf.extend_from_slice(&a);
        let r = scan(&buf, 100, |_, _, _| {});
        assert_eq!(r.records, 4);
        assert_eq!(
            r.corrupt,
            [(100 + a.len() as u64, 100 + garbage_end as u64)]
        );
    }
}
