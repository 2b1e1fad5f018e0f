//! Segment files of one sliver's log: `<day>/seg-<created ns, 20 digits>.log`, each with an
//! index sidecar `seg-<same>-<min first>-<max last>.idx` once sealed. `<day>` is a UTC date,
//! `YYYY-MM-DD`: the writer puts each batch of records into a segment of the day of the
//! batch's earliest last packet, and a batch reaching into a later day into a segment of its
//! own, so a segment of day D holds records whose last packets fall on D, or within one
//! batch after it. A query lists only the days its window can reach ([`scan_window`]), so
//! its cost does not grow with the retention window. Logs written
//! before day directories (segments directly in the sliver directory) are still read. Names
//! sort in creation order.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{AuditError, Result};

const PREFIX: &str = "seg-";
/// Nanoseconds in a day.
const DAY_NS: u64 = 86_400_000_000_000;
/// A segment is sealed at most this long after it was created (the writer's `segment_age` is
/// held to it).
pub const MAX_SEGMENT_AGE: std::time::Duration = std::time::Duration::from_secs(86_400);
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
    /// The segment of sliver directory `dir` created at `created_ns`, in the day directory of
    /// that time.
    pub fn new(dir: &Path, created_ns: u64) -> Self {
        Self::in_day(dir, created_ns, created_ns)
    }

    /// The segment of sliver directory `dir` created at `created_ns`, in the day directory of
    /// time `day_ns` (the writer's: the day of its records' last packets).
    pub fn in_day(dir: &Path, day_ns: u64, created_ns: u64) -> Self {
        Segment {
            created_ns,
            path: dir
                .join(day_name(day_ns))
                .join(format!("{PREFIX}{created_ns:020}{LOG_EXT}")),
            index: None,
            span: None,
        }
    }

    /// The name of its day directory, if it is in one.
    pub fn day(&self) -> Option<&str> {
        self.path
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .filter(|n| is_day_name(n))
    }

    /// The directory its files are in.
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
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

/// The day directory name of time `ns`: its UTC date, `YYYY-MM-DD`.
pub fn day_name(ns: u64) -> String {
    let t = crate::params::format_time(ns);
    t.get(..10).unwrap_or(&t).to_string()
}

fn is_day_dir(dir: &Path) -> bool {
    dir.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_day_name)
}

fn is_day_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, &c)| {
            if i == 4 || i == 7 {
                c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
}

/// What a scan found: segments by creation time, indexes and spans to attach, and junk.
#[derive(Default)]
struct Scan {
    segs: std::collections::BTreeMap<u64, Segment>,
    indexes: Vec<(u64, u64, u64, PathBuf)>,
    spans: Vec<(u64, PathBuf)>,
    junk: Vec<PathBuf>,
}

impl Scan {
    /// The segment files directly in `dir`; day directories whose name `day_wanted` accepts
    /// are scanned too (not deeper).
    fn dir(&mut self, dir: &Path, day_wanted: &dyn Fn(&str) -> bool) -> Result<()> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            // A day directory retention emptied and removed since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_day_dir(dir) => return Ok(()),
            Err(e) => return Err(AuditError::io(dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| AuditError::io(dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_day_name(name) {
                if day_wanted(name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    self.dir(&entry.path(), &|_| false)?;
                }
                continue;
            }
            match parse_name(name) {
                Some(Name::Log(created_ns)) => {
                    self.segs.insert(
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
                    self.indexes
                        .push((created, min_first, max_last, entry.path()));
                }
                Some(Name::Span(created)) => self.spans.push((created, entry.path())),
                Some(Name::Temp) => self.junk.push(entry.path()),
                None => {}
            }
        }
        Ok(())
    }

    fn finish(mut self) -> (Vec<Segment>, Vec<PathBuf>) {
        for (created, min_first, max_last, path) in self.indexes {
            match self.segs.get_mut(&created) {
                Some(seg) if seg.index.is_none() => {
                    seg.index = Some(IndexFile {
                        path,
                        min_first,
                        max_last,
                    })
                }
                _ => self.junk.push(path),
            }
        }
        for (created, path) in self.spans {
            match self.segs.get_mut(&created) {
                Some(seg) => seg.span = Some(path),
                None => self.junk.push(path),
            }
        }
        (self.segs.into_values().collect(), self.junk)
    }
}

/// The segments of sliver directory `dir` (every day), oldest first, each with its index if it
/// has one; also the files to clean up (temporary indexes, and indexes or spans whose segment
/// is gone, both left by crashes).
pub fn scan_dir(dir: &Path) -> Result<(Vec<Segment>, Vec<PathBuf>)> {
    let mut scan = Scan::default();
    scan.dir(dir, &|_| true)?;
    Ok(scan.finish())
}

/// The segments of sliver directory `dir` that may hold records of the window
/// `[from_ns, to_ns]`, oldest first: those of the days from the day before `from_ns` to the day
/// after `to_ns` (a segment's records end on its day or within a batch after it, and a flow
/// record lasts far less than a day: the flow table cuts flows at its active timeout), and
/// any written before day directories. A caller still checks each one's span.
pub fn scan_window(dir: &Path, from_ns: u64, to_ns: u64) -> Result<Vec<Segment>> {
    let first = day_name(from_ns.saturating_sub(DAY_NS));
    let last = day_name(to_ns.saturating_add(DAY_NS));
    let mut scan = Scan::default();
    scan.dir(dir, &|day| day >= first.as_str() && day <= last.as_str())?;
    Ok(scan.finish().0)
}

/// Remove the day directories of `dir` that are empty (retention deleted their segments).
pub fn remove_empty_days(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_str().is_some_and(is_day_name) {
            // Fails, harmlessly, while the directory still has files.
            let _ = fs::remove_dir(entry.path());
        }
    }
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

    /// Create an empty file at `path`, and its directory.
    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, b"").expect("write");
    }

    #[test]
    fn names_round_trip_and_sort() {
        let dir = tempfile::tempdir().expect("tempdir");
        for t in [30u64, 1_800_000_000_000_000_000, 2] {
            touch(&Segment::new(dir.path(), t).path);
        }
        touch(&dir.path().join("seg-12.log"));
        touch(&dir.path().join("LOCK"));
        let seg = Segment::new(dir.path(), 30);
        touch(&seg.index_path(5, 77));
        let orphan = Segment::new(dir.path(), 99).index_path(1, 2);
        touch(&orphan);
        touch(&seg.index_tmp_path());
        touch(&seg.span_path());
        let lost_span = Segment::new(dir.path(), 98).span_path();
        touch(&lost_span);
        // A segment written before day directories, directly in the sliver directory.
        let legacy = dir.path().join(format!("seg-{:020}.log", 40));
        touch(&legacy);
        let (segs, junk) = scan_dir(dir.path()).expect("scan");
        let got: Vec<u64> = segs.iter().map(|s| s.created_ns).collect();
        assert_eq!(got, [2, 30, 40, 1_800_000_000_000_000_000]);
        let idx = segs[1].index.as_ref().expect("index found");
        assert_eq!((idx.min_first, idx.max_last), (5, 77));
        assert!(segs[0].index.is_none());
        assert_eq!(segs[1].span, Some(seg.span_path()));
        assert_eq!(segs[2].path, legacy);
        assert_eq!(junk.len(), 3);
        assert!(junk.contains(&orphan) && junk.contains(&seg.index_tmp_path()));
        assert!(junk.contains(&lost_span));
        assert_eq!(
            segs[3].dir(),
            dir.path().join("2027-01-15"),
            "1.8e18 ns is 2027-01-15T08:00:00Z"
        );
    }

    #[test]
    fn a_window_lists_only_the_days_it_can_reach() {
        const DAY: u64 = 86_400_000_000_000;
        // 2026-11-01T00:00:00Z, then a segment at noon of each of 30 days.
        let day0 = 1_793_491_200_000_000_000;
        assert_eq!(day_name(day0), "2026-11-01");
        assert_eq!(day_name(day0 - 1), "2026-10-31");
        let dir = tempfile::tempdir().expect("tempdir");
        for d in 0..30 {
            touch(&Segment::new(dir.path(), day0 + d * DAY + DAY / 2).path);
        }
        touch(&dir.path().join(format!("seg-{:020}.log", 7)));
        let days = |from: u64, to: u64| -> Vec<u64> {
            scan_window(dir.path(), from, to)
                .expect("scan")
                .iter()
                .map(|s| s.created_ns.saturating_sub(day0) / DAY)
                .collect()
        };
        // A window on day 10: days 9 to 11, and the flat old segment (created_ns 7).
        let at = day0 + 10 * DAY + 3_600_000_000_000;
        assert_eq!(days(at, at + 60_000_000_000), [0, 9, 10, 11]);
        assert_eq!(days(day0 + 29 * DAY, day0 + 40 * DAY), [0, 28, 29]);
        assert_eq!(scan_dir(dir.path()).expect("all").0.len(), 31);
        // Retention's clean-up: an emptied day goes, a day with files stays.
        let emptied = Segment::new(dir.path(), day0 + DAY / 2);
        fs::remove_file(&emptied.path).expect("rm");
        remove_empty_days(dir.path());
        assert!(!emptied.dir().exists());
        assert!(Segment::new(dir.path(), day0 + DAY + DAY / 2)
            .dir()
            .exists());
    }
}
