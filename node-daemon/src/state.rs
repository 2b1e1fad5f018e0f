//! The daemon's state directory: one record file per sliver in `slivers/`.
//!
//! A record file is made once, when the sliver is defined (written whole under a temporary
//! name, synced, renamed, directory synced), and never grows after that: it holds two fixed
//! slots of [`SLOT_LEN`] bytes, and each later update overwrites the older slot in place
//! (sequence number, length, CRC-32, JSON) and syncs. A crash mid-update leaves a slot whose
//! CRC fails, and the other slot, the previous version, is read. So only defining a sliver
//! needs new disk space: changing, starting, stopping and deleting it work on a full disk
//! (on filesystems that overwrite in place: ext4, xfs, tmpfs; not on copy-on-write ones).
//! Records written by earlier versions (`<name>.json`) are read and converted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{valid_sliver_name, SliverSpec};

const RECORD_EXT: &str = "rec";
const LEGACY_EXT: &str = "json";
const TMP_PREFIX: &str = ".tmp-";
/// Bytes of each of a record file's two slots.
pub const SLOT_LEN: usize = 16 * 1024;
/// A slot: magic, sequence number, JSON length, CRC-32 of (sequence, length, JSON), JSON.
const SLOT_MAGIC: [u8; 4] = *b"SVR1";
const SLOT_HEADER: usize = 4 + 8 + 4 + 4;
/// Longest record JSON a slot holds.
pub const MAX_RECORD_LEN: usize = SLOT_LEN - SLOT_HEADER;

impl SliverState {
    /// The lowercase name used in the API and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            SliverState::Created => "created",
            SliverState::Starting => "starting",
            SliverState::Running => "running",
            SliverState::Stopping => "stopping",
            SliverState::Stopped => "stopped",
            SliverState::Failed => "failed",
        }
    }
}

/// Where a sliver is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliverState {
    /// Defined, never started or started and stopped.
    Created,
    /// VMM being spawned.
    Starting,
    /// VMM running.
    Running,
    /// Stop requested.
    Stopping,
    /// VMM exited in an orderly way.
    Stopped,
    /// VMM exited with an error or was killed.
    Failed,
}

/// What the daemon remembers of a sliver across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliverRecord {
    /// The accepted spec.
    pub spec: SliverSpec,
    /// Current state.
    pub state: SliverState,
    /// PID of the VMM while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// When the VMM was started, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// Why the VMM last ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_reason: Option<String>,
    /// Its place in the node's jail ids (`--jail-ids`): its VMM runs as the id that far into
    /// the range; given at its first start, kept until it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail_index: Option<u32>,
}

/// Errors of the state directory; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The filesystem holding the state directory is full (ENOSPC, or EDQUOT).
    #[error("{path}: no space left on the state directory's filesystem")]
    NoSpace {
        /// The file that could not be written.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A record is longer than a slot holds.
    #[error("{path}: a record of {len} bytes is longer than the {MAX_RECORD_LEN} a record holds")]
    TooLong {
        /// The record file.
        path: PathBuf,
        /// The record's JSON length.
        len: usize,
    },
    /// A record could not be parsed.
    #[error("{path}: not a sliver record: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// Neither slot of a record file holds a whole record.
    #[error("{path}: no slot holds a whole record")]
    Torn {
        /// The file.
        path: PathBuf,
    },
    /// A name that cannot be a file name here.
    #[error("{0:?} is not a sliver name")]
    BadName(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| match source.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => StateError::NoSpace {
            path: path.to_path_buf(),
        },
        _ => StateError::Io {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// Slot `seq`'s bytes for record JSON `json` (`json` fits: checked by the caller).
fn encode_slot(seq: u64, json: &[u8]) -> Vec<u8> {
    let len = u32::try_from(json.len()).unwrap_or(u32::MAX);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&len.to_le_bytes());
    crc.update(json);
    let mut slot = Vec::with_capacity(SLOT_LEN);
    slot.extend_from_slice(&SLOT_MAGIC);
    slot.extend_from_slice(&seq.to_le_bytes());
    slot.extend_from_slice(&len.to_le_bytes());
    slot.extend_from_slice(&crc.finalize().to_le_bytes());
    slot.extend_from_slice(json);
    slot.resize(SLOT_LEN, 0);
    slot
}

/// The sequence number and JSON of a whole slot; `None` for an empty or torn one.
fn decode_slot(slot: &[u8]) -> Option<(u64, &[u8])> {
    if slot.len() < SLOT_HEADER || slot[..4] != SLOT_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(slot[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(slot[12..16].try_into().ok()?);
    let stored = u32::from_le_bytes(slot[16..20].try_into().ok()?);
    let json = slot.get(SLOT_HEADER..SLOT_HEADER + usize::try_from(len).ok()?)?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&len.to_le_bytes());
    crc.update(json);
    (crc.finalize() == stored).then_some((seq, json))
}

/// The newest whole slot of a record file's bytes: its index, sequence number and JSON.
fn newest_slot(bytes: &[u8]) -> Option<(usize, u64, &[u8])> {
    bytes
        .chunks(SLOT_LEN)
        .take(2)
        .enumerate()
        .filter_map(|(i, slot)| decode_slot(slot).map(|(seq, json)| (i, seq, json)))
        .max_by_key(|(_, seq, _)| *seq)
}

/// What [`StateDir::load_all`] found: the records by name, and the files it could not use.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Records, sorted by sliver name.
    pub records: Vec<(String, SliverRecord)>,
    /// Unreadable or corrupt files (reported, not fatal).
    pub problems: Vec<StateError>,
    /// The sliver names whose record files could not be read: they are not known to be
    /// deleted, so nothing of theirs may be removed as a stray.
    pub unreadable: Vec<String>,
}

/// The `slivers/` directory under the daemon's `--state-dir`.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Open (creating, mode 0700) `state_dir/slivers`.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("slivers");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(&dir))?;
        Ok(Self { dir })
    }

    fn path_with(&self, name: &str, ext: &str) -> Result<PathBuf, StateError> {
        if !valid_sliver_name(name) {
            return Err(StateError::BadName(name.to_string()));
        }
        Ok(self.dir.join(format!("{name}.{ext}")))
    }

    /// The record file of sliver `name`.
    pub fn record_path(&self, name: &str) -> Result<PathBuf, StateError> {
        self.path_with(name, RECORD_EXT)
    }

    /// Sync the directory after a rename or unlink (which already took effect).
    fn sync_dir_logged(&self) {
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            log::error!("{}: syncing the directory: {e}", self.dir.display());
        }
    }

    fn json(path: &Path, record: &SliverRecord) -> Result<Vec<u8>, StateError> {
        let json = serde_json::to_vec(record).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
        if json.len() > MAX_RECORD_LEN {
            return Err(StateError::TooLong {
                path: path.to_path_buf(),
                len: json.len(),
            });
        }
        Ok(json)
    }

    /// Make the record file of a new sliver `name` holding `record` (the only write that
    /// needs new space). A failure leaves no file behind.
    pub fn create(&self, name: &str, record: &SliverRecord) -> Result<(), StateError> {
        let path = self.record_path(name)?;
        let json = Self::json(&path, record)?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}"));
        let mut bytes = encode_slot(1, &json);
        bytes.resize(2 * SLOT_LEN, 0);
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_all()))
            .map_err(io_err(&tmp))
            .and_then(|()| fs::rename(&tmp, &path).map_err(io_err(&path)));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The rename is the commit point: a failed directory sync is logged, not an error.
        self.sync_dir_logged();
        Ok(())
    }

    /// Replace the record of existing sliver `name` with `record`, in place: the older of
    /// the file's two slots is overwritten and synced. Needs no new disk space.
    pub fn save(&self, name: &str, record: &SliverRecord) -> Result<(), StateError> {
        let path = self.record_path(name)?;
        let json = Self::json(&path, record)?;
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Still in the earlier format (its conversion could not be written).
                self.create(name, record)?;
                let legacy = self.path_with(name, LEGACY_EXT)?;
                let _ = fs::remove_file(legacy);
                self.sync_dir_logged();
                return Ok(());
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut bytes = vec![0u8; 2 * SLOT_LEN];
        file.read_exact_at(&mut bytes, 0).map_err(io_err(&path))?;
        let (index, seq) = match newest_slot(&bytes) {
            Some((i, seq, _)) => (1 - i, seq + 1),
            None => (0, 1),
        };
        let offset = u64::try_from(index * SLOT_LEN).unwrap_or(0);
        file.write_all_at(&encode_slot(seq, &json), offset)
            .and_then(|()| file.sync_data())
            .map_err(io_err(&path))
    }

    /// Remove the record of `name` (absent is fine). Frees space, needs none.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        for path in [self.record_path(name)?, self.path_with(name, LEGACY_EXT)?] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        // The unlink is the commit point.
        self.sync_dir_logged();
        Ok(())
    }

    fn load(path: &Path) -> Result<SliverRecord, StateError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let (_, _, json) = newest_slot(&bytes).ok_or_else(|| StateError::Torn {
            path: path.to_path_buf(),
        })?;
        serde_json::from_slice(json).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A record file of an earlier version (one JSON document), converted to this one. If the
    /// conversion cannot be written (a full disk), the record is still returned, and the old
    /// file kept: [`StateDir::save`] converts it at the record's next change.
    fn convert_legacy(&self, name: &str, path: &Path) -> Result<SliverRecord, StateError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let record: SliverRecord =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: path.to_path_buf(),
                source,
            })?;
        match self.create(name, &record) {
            Ok(()) => {
                fs::remove_file(path).map_err(io_err(path))?;
                self.sync_dir_logged();
            }
            Err(e) => log::warn!(
                "{}: kept in the earlier format for now: {e}",
                path.display()
            ),
        }
        Ok(record)
    }

    /// Every record, plus the files that could not be read. Temporary files left by a crash
    /// (or a full disk) mid-create are removed; records of earlier versions are converted.
    pub fn load_all(&self) -> Result<Loaded, StateError> {
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let mut unreadable = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let path = entry.map_err(io_err(&self.dir))?.path();
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if file.starts_with(TMP_PREFIX) {
                if let Err(e) = fs::remove_file(&path) {
                    problems.push(io_err(&path)(e));
                }
                continue;
            }
            let (name, legacy) = match file.rsplit_once('.') {
                Some((name, RECORD_EXT)) => (name, false),
                Some((name, LEGACY_EXT)) => (name, true),
                _ => continue,
            };
            if !valid_sliver_name(name) {
                problems.push(StateError::BadName(name.to_string()));
                continue;
            }
            if legacy && self.record_path(name)?.exists() {
                // Converted already; only the old file's removal was cut off.
                let _ = fs::remove_file(&path);
                continue;
            }
            let loaded = if legacy {
                self.convert_legacy(name, &path)
            } else {
                Self::load(&path)
            };
            match loaded {
                Ok(record) => records.push((name.to_string(), record)),
                Err(e) => {
                    problems.push(e);
                    unreadable.push(name.to_string());
                }
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Loaded {
            records,
            problems,
            unreadable,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(slice: &str, state: SliverState) -> SliverRecord {
        SliverRecord {
            spec: SliverSpec {
                name: Some("a".into()),
                slice: slice.into(),
                kernel: "/k".into(),
                initrd: None,
                cmdline: None,
                vcpus: 1,
                mem_mib: 128,
                net: None,
                vref: None,
                disk_max: None,
                keys: None,
                cpu_share: 1,
                cpu_max_pct: None,
                cpu_cores: None,
                cpu_pct: None,
            },
            state,
            pid: Some(42),
            started_at: Some(1_700_000_000),
            exit_reason: None,
            jail_index: None,
        }
    }

    #[test]
    fn create_save_load_remove() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        state
            .create("web-1", &record("s1", SliverState::Running))
            .expect("create");
        state
            .create("db", &record("s2", SliverState::Created))
            .expect("create");
        let path = dir.path().join("slivers/web-1.rec");
        let size = fs::metadata(&path).expect("meta").len();
        for _ in 0..5 {
            state
                .save("web-1", &record("s1", SliverState::Stopped))
                .expect("update");
        }
        assert_eq!(
            fs::metadata(&path).expect("meta").len(),
            size,
            "updates never grow the file"
        );
        let Loaded {
            records: all,
            problems,
            ..
        } = state.load_all().expect("load");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "db");
        assert_eq!(all[1].1.state, SliverState::Stopped);
        state.remove("web-1").expect("remove");
        state.remove("web-1").expect("absent is fine");
        assert_eq!(state.load_all().expect("load").records.len(), 1);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join("slivers/db.rec"))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_torn_update_leaves_the_previous_version() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        state
            .create("web-1", &record("s1", SliverState::Created))
            .expect("create");
        state
            .save("web-1", &record("s1", SliverState::Running))
            .expect("update");
        // The next update goes to slot 0; tear it half-way.
        let path = dir.path().join("slivers/web-1.rec");
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        let next = encode_slot(3, b"{\"torn\": true, \"and\": \"long enough to matter\"}");
        file.write_all_at(&next[..40], 0).expect("tear");
        let loaded = state.load_all().expect("load");
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        assert_eq!(loaded.records[0].1.state, SliverState::Running);
        // Both slots torn: reported, not fatal, the other records load.
        file.write_all_at(&next[..40], u64::try_from(SLOT_LEN).expect("len"))
            .expect("tear");
        state
            .create("db", &record("s2", SliverState::Created))
            .expect("create");
        let loaded = state.load_all().expect("load");
        assert_eq!(loaded.records.len(), 1);
        assert!(matches!(loaded.problems[..], [StateError::Torn { .. }]));
    }

    #[test]
    fn records_of_the_earlier_format_are_converted() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        let old = record("s1", SliverState::Stopped);
        fs::write(
            dir.path().join("slivers/web-1.json"),
            serde_json::to_vec_pretty(&old).expect("json"),
        )
        .expect("legacy");
        let loaded = state.load_all().expect("load");
        assert_eq!(loaded.records, vec![("web-1".to_string(), old.clone())]);
        assert!(!dir.path().join("slivers/web-1.json").exists());
        assert_eq!(state.load_all().expect("again").records[0].1, old);
    }

    #[test]
    fn a_record_too_long_for_a_slot_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        let mut big = record("s1", SliverState::Created);
        big.exit_reason = Some("x".repeat(SLOT_LEN));
        assert!(matches!(
            state.create("web-1", &big),
            Err(StateError::TooLong { .. })
        ));
        assert_eq!(
            fs::read_dir(dir.path().join("slivers"))
                .expect("dir")
                .count(),
            0
        );
    }

    #[test]
    fn crash_leftovers_and_corruption_are_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        state
            .create("good", &record("s", SliverState::Created))
            .expect("create");
        let slivers = dir.path().join("slivers");
        fs::write(slivers.join(".tmp-half"), b"{\"spec\": ").expect("tmp");
        fs::write(slivers.join("torn.json"), b"{\"spec\": ").expect("torn");
        fs::write(slivers.join("NotAName.rec"), b"{}").expect("bad name");
        let Loaded {
            records: all,
            problems,
            ..
        } = state.load_all().expect("load");
        assert_eq!(
            all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["good"]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.to_string().contains("torn.json")));
        let unreadable = state.load_all().expect("load").unreadable;
        assert_eq!(
            unreadable,
            ["torn"],
            "its name is known, and kept from the sweeps"
        );
        assert!(!slivers.join(".tmp-half").exists(), "leftover removed");
    }

    #[test]
    fn names_are_checked_before_touching_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        assert!(matches!(
            state.create("../escape", &record("s", SliverState::Created)),
            Err(StateError::BadName(_))
        ));
        assert!(matches!(state.remove("a/b"), Err(StateError::BadName(_))));
    }

    #[test]
    fn states_serialise_lowercase() {
        assert_eq!(
            serde_json::to_string(&SliverState::Running).expect("json"),
            "\"running\""
        );
    }
}
