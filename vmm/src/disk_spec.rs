//! `--disk path=FILE[,ro][,id=NAME]`: one virtio-blk device on a host file; `ro` makes it
//! read-only, `id` is its serial (GET_ID, `/sys/block/vdX/serial` in the guest).

use std::path::PathBuf;
use std::str::FromStr;

/// One disk as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// The host file (or block device).
    pub path: PathBuf,
    /// Writes refused.
    pub read_only: bool,
    /// Serial, at most 20 printable ASCII characters (default: the file name).
    pub id: Option<String>,
}

/// A `--disk` value that does not parse; the message names the offending part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiskSpecError {
    /// `path=` missing or empty.
    #[error("--disk {0:?}: path=FILE is required")]
    NoPath(String),
    /// An unknown key.
    #[error("--disk {spec:?}: unknown key {key:?} (expected path=FILE[,ro][,id=NAME])")]
    UnknownKey {
        /// Whole value.
        spec: String,
        /// The key.
        key: String,
    },
    /// A key given twice.
    #[error("--disk {spec:?}: {key} given twice")]
    Duplicate {
        /// Whole value.
        spec: String,
        /// The key.
        key: String,
    },
}

impl FromStr for DiskSpec {
    type Err = DiskSpecError;

    fn from_str(spec: &str) -> Result<Self, DiskSpecError> {
        let (mut path, mut read_only, mut id) = (None, None, None);
        for part in spec.split(',') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let dup = || DiskSpecError::Duplicate {
                spec: spec.into(),
                key: key.into(),
            };
            let taken = match key {
                "path" if !value.is_empty() => path.replace(PathBuf::from(value)).is_some(),
                "ro" if value.is_empty() => read_only.replace(true).is_some(),
                "id" => id.replace(value.to_string()).is_some(),
                "path" => return Err(DiskSpecError::NoPath(spec.into())),
                _ => {
                    return Err(DiskSpecError::UnknownKey {
                        spec: spec.into(),
                        key: part.into(),
                    })
                }
            };
            if taken {
                return Err(dup());
            }
        }
        Ok(DiskSpec {
            path: path.ok_or_else(|| DiskSpecError::NoPath(spec.into()))?,
            read_only: read_only.unwrap_or(false),
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse_and_errors_name_the_part() {
        let d: DiskSpec = "path=/var/disk.img,ro,id=root".parse().expect("spec");
        assert_eq!(
            d,
            DiskSpec {
                path: "/var/disk.img".into(),
                read_only: true,
                id: Some("root".into())
            }
        );
        let d: DiskSpec = "path=a.img".parse().expect("spec");
        assert!(!d.read_only && d.id.is_none());
        for (bad, want) in [
            ("ro", "path=FILE is required"),
            ("path=", "path=FILE is required"),
            ("path=a,rw", "unknown key \"rw\""),
            ("path=a,ro=yes", "unknown key \"ro=yes\""),
            ("path=a,path=b", "path given twice"),
        ] {
            let e = bad.parse::<DiskSpec>().expect_err(bad).to_string();
            assert!(e.starts_with("--disk ") && e.contains(want), "{bad}: {e}");
        }
    }
}
