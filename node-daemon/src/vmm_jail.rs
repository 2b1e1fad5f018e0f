//! The ids the node's VMMs run as (`slicevisor node --jail-ids FIRST-LAST`): each sliver gets
//! the id `FIRST + jail_index` as both uid and gid for as long as it exists (its index is in
//! its record), so no two slivers' VMMs share an id, and no id is a real user's or group's
//! (checked against the host's passwd and group databases at start). Before a start, the
//! sliver's own files (run directory, audit directory, disks) are handed to its id; the VMM
//! then jails itself (`vmm::jail`).

use std::path::Path;
use std::str::FromStr;

/// The default range: far above the ids distributions give users (1000…) and system
/// services, and above the first subordinate-id blocks (100000…165535 for the first user).
pub const DEFAULT_JAIL_IDS: &str = "900000-965535";

/// A range of ids, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailIds {
    /// The first id (not 0).
    pub first: u32,
    /// The last id.
    pub last: u32,
}

/// Why a `--jail-ids` range cannot be used; each message names the flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JailIdsError {
    /// Not `FIRST-LAST` with 0 < FIRST <= LAST < 2^32 - 1.
    #[error("--jail-ids {0:?}: expected FIRST-LAST, 0 < FIRST <= LAST < 4294967295")]
    Syntax(String),
    /// The range holds a real user's or group's id.
    #[error("--jail-ids {range}: overlaps {what} {name} (id {id}) in {file}")]
    Overlap {
        /// The range as given.
        range: String,
        /// "user" or "group".
        what: &'static str,
        /// Its name.
        name: String,
        /// Its id.
        id: u32,
        /// Where it is defined.
        file: &'static str,
    },
    /// Every id is taken by a sliver.
    #[error(
        "--jail-ids {range}: all {count} ids are given to slivers; delete some or widen the range"
    )]
    Exhausted {
        /// The range.
        range: String,
        /// How many ids it has.
        count: u64,
    },
}

impl FromStr for JailIds {
    type Err = JailIdsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || JailIdsError::Syntax(s.to_string());
        let (first, last) = s.split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first || last == u32::MAX {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl std::fmt::Display for JailIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl JailIds {
    /// The id of the sliver with `index`.
    pub fn id(&self, index: u32) -> Result<u32, JailIdsError> {
        self.first
            .checked_add(index)
            .filter(|&id| id <= self.last)
            .ok_or(JailIdsError::Exhausted {
                range: self.to_string(),
                count: u64::from(self.last - self.first) + 1,
            })
    }

    /// Refuse a range holding an id of `passwd` (`/etc/passwd` lines, `name:x:uid:...`) or
    /// `group` (`/etc/group`, `name:x:gid:...`).
    pub fn check_free(&self, passwd: &str, group: &str) -> Result<(), JailIdsError> {
        for (text, what, file) in [
            (passwd, "user", "/etc/passwd"),
            (group, "group", "/etc/group"),
        ] {
            for line in text.lines() {
                let mut fields = line.split(':');
                let (Some(name), Some(_), Some(id)) = (fields.next(), fields.next(), fields.next())
                else {
                    continue;
                };
                let Ok(id) = id.parse::<u32>() else {
                    continue;
                };
                if (self.first..=self.last).contains(&id) {
                    return Err(JailIdsError::Overlap {
                        range: self.to_string(),
                        what,
                        name: name.to_string(),
                        id,
                        file,
                    });
                }
            }
        }
        Ok(())
    }

    /// [`JailIds::check_free`] against this host's databases (a missing file counts as empty).
    pub fn check_host(&self) -> Result<(), JailIdsError> {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        self.check_free(&read("/etc/passwd"), &read("/etc/group"))
    }
}

/// Give `path` (and, for a directory, everything in it) to `id` as owner and group. Symbolic
/// links are changed themselves, never followed.
pub fn hand_over(path: &Path, id: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(id), Some(id))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            hand_over(&entry?.path(), id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_give_ids_in_order() {
        let r: JailIds = "900000-900001".parse().expect("parse");
        assert_eq!(r.id(0), Ok(900000));
        assert_eq!(r.id(1), Ok(900001));
        assert!(matches!(
            r.id(2),
            Err(JailIdsError::Exhausted { count: 2, .. })
        ));
        for bad in ["0-5", "5-4", "5", "a-b", "1-4294967295", ""] {
            let e = bad.parse::<JailIds>().expect_err(bad);
            assert!(e.to_string().contains("--jail-ids"), "{e}");
        }
    }

    #[test]
    fn a_range_with_a_real_user_or_group_is_refused_by_name() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:\nbuild:x:2000:\n";
        let r: JailIds = "1000-1999".parse().expect("parse");
        let e = r.check_free(passwd, group).expect_err("alice");
        assert_eq!(
            e.to_string(),
            "--jail-ids 1000-1999: overlaps user alice (id 1000) in /etc/passwd"
        );
        let r: JailIds = "1500-2500".parse().expect("parse");
        let e = r.check_free(passwd, group).expect_err("build");
        assert!(
            e.to_string()
                .contains("group build (id 2000) in /etc/group"),
            "{e}"
        );
        let r: JailIds = DEFAULT_JAIL_IDS.parse().expect("default");
        assert_eq!(r.check_free(passwd, group), Ok(()));
    }

    #[test]
    fn hand_over_changes_a_tree_without_following_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::fs::write(dir.path().join("sub/f"), b"x").expect("write");
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).expect("symlink");
        hand_over(dir.path(), 900_123).expect("chown");
        use std::os::unix::fs::MetadataExt;
        for p in ["", "sub", "sub/f"] {
            let m = std::fs::symlink_metadata(dir.path().join(p)).expect("stat");
            assert_eq!((m.uid(), m.gid()), (900_123, 900_123), "{p}");
        }
        let host = std::fs::metadata("/etc/hostname").expect("stat");
        assert_ne!(host.uid(), 900_123, "the link's target is not touched");
    }
}
