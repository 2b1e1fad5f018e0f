//! Segment files of one sliver's log: `seg-<created ns, 20 digits>.log`, each with an index
//! sidecar `seg-<same>.idx` once sealed. Names sort in creation order.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{AuditError, Result};

const PREFIX: &str = "seg-";
const LOG_EXT: &str = ".log";
const IDX_EXT: &str = ".idx";

/// One segment file of a sliver directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Segment {
    /// Creation time, ns since the Unix epoch (the name's number).
    pub created_ns: u64,
    /// The `.log` file.
    pub path: PathBuf,
    /// Its index, if sealed.
    pub index: Option<IndexFile>,
    /// Its span file, while it is being written (see `span.rs`).
    pub span: Option<PathBuf>,
}

/// A segment's index file and the time span its name gives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexFile {
    /// The `.idx` file.
    pub path: PathBuf,
    /// Earliest first packet in the segment.
    pub min_first: u64,
    /// Latest last packet in the segment.
    pub max_last: u64,
}

impl Segment {
    /// The segment of `dir` created at `created_ns`.
    pub fn new(dir: &Path, created_ns: u64) -> Self {
        Segment {
            created_ns,
            path: dir.join(format!("{PREFIX}{created_ns:020}{LOG_EXT}")),
            index: None,
            span: None,
        }
    }

    /// Its span file (`seg-<created>.span`).
    pub fn span_path(&self) -> PathBuf {
        self.path.with_extension("span")
    }

    /// The name of its index covering `[min_first, max_last]`.
    pub fn index_path(&self, min_first: u64, max_last: u64) -> PathBuf {
        self.path.with_file_name(format!(
            "{PREFIX}{:020}-{min_first:020}-{max_last:020}{IDX_EXT}",
            self.created_ns
        ))
    }

    /// The temporary name the index is written under before its rename.
    pub fn index_tmp_path(&self) -> PathBuf {
        self.path.with_extension("idx.tmp")
    }
}

fn number(s: &str) -> Option<u64> {
    if s.len() != 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// What a file name of a sliver directory is.
enum Name {
    Log(u64),
    Index(u64, u64, u64),
    Span(u64),
    Temp,
}

fn parse_name(name: &str) -> Option<Name> {
    let rest = name.strip_prefix(PREFIX)?;
    if let Some(num) = rest.strip_suffix(LOG_EXT) {
        return number(num).map(Name::Log);
    }
    if rest.ends_with(".idx.tmp") {
        return Some(Name::Temp);
    }
    if let Some(num) = rest.strip_suffix(".span") {
        return number(num).map(Name::Span);
    }
    let mut parts = rest.strip_suffix(IDX_EXT)?.split('-');
    let created = number(parts.next()?)?;
    let min_first = number(parts.next()?)?;
    let max_last = number(parts.next()?)?;
    parts
        .next()
        .is_none()
        .then_some(Name::Index(created, min_first, max_last))
}

/// The segments of `dir`, oldest first, each with its index if it has one; also the files to
/// clean up (temporary indexes, and indexes whose segment is gone, both left by crashes).
pub fn scan_dir(dir: &Path) -> Result<(Vec<Segment>, Vec<PathBuf>)> {
    let mut segs = std::collections::BTreeMap::new();
    let mut indexes = Vec::new();
    let mut spans = Vec::new();
    let mut junk = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))? {
        let entry = entry.map_err(|e| AuditError::io(dir, e))?;
        match entry.file_name().to_str().and_then(parse_name) {
            Some(Name::Log(created_ns)) => {
                segs.insert(
                    created_ns,
                    Segment {
                        created_ns,
                        path: entry.path(),
                        index: None,
                        span: None,
                    },
                );
            }
            Some(Name::Index(created, min_first, max_last)) => {
                indexes.push((created, min_first, max_last, entry.path()));
            }
            Some(Name::Span(created)) => spans.push((created, entry.path())),
            Some(Name::Temp) => junk.push(entry.path()),
            None => {}
        }
    }
    for (created, min_first, max_last, path) in indexes {
        match segs.get_mut(&created) {
            Some(seg) if seg.index.is_none() => {
                seg.index = Some(IndexFile {
                    path,
                    min_first,
                    max_last,
                })
            }
            _ => junk.push(path),
        }
    }
    for (created, path) in spans {
        match segs.get_mut(&created) {
            Some(seg) => seg.span = Some(path),
            None => junk.push(path),
        }
    }
    Ok((segs.into_values().collect(), junk))
}

/// The segments of `dir`, oldest first.
pub fn list(dir: &Path) -> Result<Vec<Segment>> {
    Ok(scan_dir(dir)?.0)
}

/// The directory of `sliver`'s log and capture ring: `STATE_DIR/audit/<sliver>/`.
pub fn sliver_dir(state_dir: &Path, sliver: &str) -> PathBuf {
    state_dir.join("audit").join(sliver)
}

/// The sliver log directories under `STATE_DIR/audit/`, sorted by name.
pub fn sliver_dirs(state_dir: &Path) -> Result<Vec<PathBuf>> {
    let root = state_dir.join("audit");
    let mut dirs = Vec::new();
    let entries = match fs::read_dir(&root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dirs),
        Err(e) => return Err(AuditError::io(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io(&root, e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Now, ns since the Unix epoch.
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort() {
        let dir = tempfile::tempdir().expect("tempdir");
        for t in [30u64, 1_800_000_000_000_000_000, 2] {
            fs::write(Segment::new(dir.path(), t).path, b"").expect("write");
        }
        fs::write(dir.path().join("seg-12.log"), b"").expect("write");
        fs::write(dir.path().join("LOCK"), b"").expect("write");
        let seg = Segment::new(dir.path(), 30);
        fs::write(seg.index_path(5, 77), b"").expect("write");
        let orphan = Segment::new(dir.path(), 99).index_path(1, 2);
        fs::write(&orphan, b"").expect("write");
        fs::write(seg.index_tmp_path(), b"").expect("write");
        fs::write(seg.span_path(), b"").expect("write");
        let lost_span = Segment::new(dir.path(), 98).span_path();
        fs::write(&lost_span, b"").expect("write");
        let (segs, junk) = scan_dir(dir.path()).expect("scan");
        let got: Vec<u64> = segs.iter().map(|s| s.created_ns).collect();
        assert_eq!(got, [2, 30, 1_800_000_000_000_000_000]);
        let idx = segs[1].index.as_ref().expect("index found");
        assert_eq!((idx.min_first, idx.max_last), (5, 77));
        assert!(segs[0].index.is_none());
        assert_eq!(segs[1].span, Some(seg.span_path()));
        assert_eq!(junk.len(), 3);
        assert!(junk.contains(&orphan) && junk.contains(&seg.index_tmp_path()));
        assert!(junk.contains(&lost_span));
    }
}
