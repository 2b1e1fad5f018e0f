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
}

impl Segment {
    /// The segment of `dir` created at `created_ns`.
    pub fn new(dir: &Path, created_ns: u64) -> Self {
        Segment {
            created_ns,
            path: dir.join(format!("{PREFIX}{created_ns:020}{LOG_EXT}")),
        }
    }

    /// Its index sidecar.
    pub fn index_path(&self) -> PathBuf {
        self.path.with_extension("idx")
    }

    /// The temporary name the index is written under before its rename.
    pub fn index_tmp_path(&self) -> PathBuf {
        self.path.with_extension("idx.tmp")
    }
}

fn parse_name(name: &str) -> Option<u64> {
    let num = name.strip_prefix(PREFIX)?.strip_suffix(LOG_EXT)?;
    if num.len() != 20 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    num.parse().ok()
}

/// The segments of `dir`, oldest first; index files and strangers are ignored.
pub fn list(dir: &Path) -> Result<Vec<Segment>> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))? {
        let entry = entry.map_err(|e| AuditError::io(dir, e))?;
        if let Some(created_ns) = entry.file_name().to_str().and_then(parse_name) {
            segs.push(Segment {
                created_ns,
                path: entry.path(),
            });
        }
    }
    segs.sort();
    Ok(segs)
}

/// Index files whose segment is gone (left by a crash during retention), for cleanup.
pub fn orphan_indexes(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut orphans = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| AuditError::io(dir, e))? {
        let entry = entry.map_err(|e| AuditError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stem = name
            .strip_suffix(IDX_EXT)
            .or_else(|| name.strip_suffix(".idx.tmp"));
        if let Some(stem) = stem {
            if !dir.join(format!("{stem}{LOG_EXT}")).exists() {
                orphans.push(entry.path());
            }
        }
    }
    Ok(orphans)
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
        fs::write(seg.index_path(), b"").expect("write");
        fs::write(dir.path().join("seg-00000000000000000099.idx"), b"").expect("write");
        let got: Vec<u64> = list(dir.path())
            .expect("list")
            .iter()
            .map(|s| s.created_ns)
            .collect();
        assert_eq!(got, [2, 30, 1_800_000_000_000_000_000]);
        let orphans = orphan_indexes(dir.path()).expect("orphans");
        assert_eq!(orphans, [dir.path().join("seg-00000000000000000099.idx")]);
    }
}
