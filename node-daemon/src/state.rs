//! The daemon's state directory: one JSON record per sliver, written atomically (temporary
//! file, fsync, rename, fsync of the directory), so a crash leaves either the old record or
//! the new one, never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::spec::{valid_sliver_name, SliverSpec};

const RECORD_EXT: &str = "json";
const TMP_PREFIX: &str = ".tmp-";

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
}

/// Errors of the state directory; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A record could not be parsed.
    #[error("{path}: not a sliver record: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// A name that cannot be a file name here.
    #[error("{0:?} is not a sliver name")]
    BadName(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What [`StateDir::load_all`] found: the records by name, and the files it could not use.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Records, sorted by sliver name.
    pub records: Vec<(String, SliverRecord)>,
    /// Unreadable or corrupt files (reported, not fatal).
    pub problems: Vec<StateError>,
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

    fn record_path(&self, name: &str) -> Result<PathBuf, StateError> {
        if !valid_sliver_name(name) {
            return Err(StateError::BadName(name.to_string()));
        }
        Ok(self.dir.join(format!("{name}.{RECORD_EXT}")))
    }

    fn sync_dir(&self) -> Result<(), StateError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))
    }

    /// Write `record` for `name`, replacing any previous one atomically.
    pub fn save(&self, name: &str, record: &SliverRecord) -> Result<(), StateError> {
        let path = self.record_path(name)?;
        let tmp = self.dir.join(format!("{TMP_PREFIX}{name}"));
        let bytes = serde_json::to_vec_pretty(record).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        self.sync_dir()
    }

    /// Remove the record of `name` (absent is fine).
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let path = self.record_path(name)?;
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every record, plus the files that could not be read. Temporary files left by a crash
    /// mid-save are removed.
    pub fn load_all(&self) -> Result<Loaded, StateError> {
        let mut records = Vec::new();
        let mut problems = Vec::new();
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
            let Some(name) = file.strip_suffix(&format!(".{RECORD_EXT}")) else {
                continue;
            };
            if !valid_sliver_name(name) {
                problems.push(StateError::BadName(name.to_string()));
                continue;
            }
            match fs::read(&path) {
                Ok(bytes) => match serde_json::from_slice(&bytes) {
                    Ok(record) => records.push((name.to_string(), record)),
                    Err(source) => problems.push(StateError::Corrupt { path, source }),
                },
                Err(e) => problems.push(io_err(&path)(e)),
            }
        }
        records.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Loaded { records, problems })
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
            },
            state,
            pid: Some(42),
            started_at: Some(1_700_000_000),
            exit_reason: None,
        }
    }

    #[test]
    fn save_load_replace_remove() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        state
            .save("web-1", &record("s1", SliverState::Running))
            .expect("save");
        state
            .save("db", &record("s2", SliverState::Created))
            .expect("save");
        state
            .save("web-1", &record("s1", SliverState::Stopped))
            .expect("replace");
        let Loaded {
            records: all,
            problems,
        } = state.load_all().expect("load");
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].0, "db");
        assert_eq!(all[1].1.state, SliverState::Stopped);
        state.remove("web-1").expect("remove");
        state.remove("web-1").expect("absent is fine");
        assert_eq!(state.load_all().expect("load").records.len(), 1);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(dir.path().join("slivers/db.json"))
                .expect("meta")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn crash_leftovers_and_corruption_are_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        state
            .save("good", &record("s", SliverState::Created))
            .expect("save");
        let slivers = dir.path().join("slivers");
        fs::write(slivers.join(".tmp-half"), b"{\"spec\": ").expect("tmp");
        fs::write(slivers.join("torn.json"), b"{\"spec\": ").expect("torn");
        fs::write(slivers.join("NotAName.json"), b"{}").expect("bad name");
        let Loaded {
            records: all,
            problems,
        } = state.load_all().expect("load");
        assert_eq!(
            all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["good"]
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(|p| p.to_string().contains("torn.json")));
        assert!(!slivers.join(".tmp-half").exists(), "leftover removed");
    }

    #[test]
    fn names_are_checked_before_touching_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let state = StateDir::open(dir.path()).expect("open");
        assert!(matches!(
            state.save("../escape", &record("s", SliverState::Created)),
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
