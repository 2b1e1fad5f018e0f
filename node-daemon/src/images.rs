//! The node's image store: reference images (`vref`s) slivers' root disks are copies of.
//! `STATE/images/<name>.img` holds the image, read-only and never written after its import;
//! `<name>.json` its size, SHA-256 and import time. An import streams the upload into a
//! temporary file, checks that it is an ext4 file system of whole sectors, syncs it and
//! renames it into place (the commit point); then writes the description. An image a
//! sliver's spec names cannot be deleted.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::SliverError;
use crate::state::{io_err, StateError};

/// Largest image the store takes: 64 GiB.
pub const MAX_IMAGE_BYTES: u64 = 64 << 30;
/// Where ext4's superblock magic 0xEF53 is (superblock at byte 1024, `s_magic` at 56;
/// little-endian).
const EXT4_MAGIC_AT: u64 = 1024 + 56;
const TMP_PREFIX: &str = ".import-";

/// Whether `s` is an image name: `[a-z0-9][a-z0-9._-]{0,62}`.
pub fn valid_image_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// What the store says of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Its name (a spec's `vref`).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
    /// When it was imported, seconds since the Unix epoch.
    pub imported_at: u64,
}

/// The image store of a state directory.
#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// The store in `state_dir/images` (created if missing); temporary files of imports that
    /// did not finish are removed.
    ///
    /// # Errors
    /// The directory cannot be made or read.
    pub fn open(state_dir: &Path) -> Result<Self, StateError> {
        let dir = state_dir.join("images");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { dir })
    }

    /// The store's directory (slivers' disks go on the same file system for reflinks).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The image file of `name`.
    pub fn image_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    fn info_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Image `name`.
    ///
    /// # Errors
    /// [`SliverError::ImageNotFound`] when the store has none of that name.
    pub fn get(&self, name: &str) -> Result<ImageInfo, SliverError> {
        if !valid_image_name(name) || !self.image_path(name).is_file() {
            return Err(SliverError::ImageNotFound(name.to_string()));
        }
        let path = self.info_path(name);
        let text = std::fs::read_to_string(&path).map_err(|e| StateError::Io {
            path: path.clone(),
            source: e,
        })?;
        serde_json::from_str(&text)
            .map_err(|e| SliverError::Internal(format!("{}: {e}", path.display())))
    }

    /// Every image, by name.
    pub fn list(&self) -> Vec<ImageInfo> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".img").map(str::to_string)
            })
            .filter(|n| valid_image_name(n))
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| self.get(&n).ok())
            .collect()
    }

    /// Start importing image `name`: refused if it exists (images never change: delete it
    /// first) or the name is not one.
    ///
    /// # Errors
    /// A bad name (400), an existing image (409), a state-directory failure.
    pub fn begin_import(&self, name: &str) -> Result<Import, SliverError> {
        if !valid_image_name(name) {
            return Err(SliverError::invalid(
                "name",
                format!("{name:?} is not an image name ([a-z0-9][a-z0-9._-]{{0,62}})"),
            ));
        }
        if self.image_path(name).exists() {
            return Err(SliverError::conflict(
                Some("name"),
                format!("image {name:?} exists; images never change: delete it first"),
            ));
        }
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .read(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        Ok(Import {
            name: name.to_string(),
            tmp,
            file: Some(file),
            hash: Sha256::new(),
            len: 0,
        })
    }

    /// Finish `import`: check it, make it read-only, sync, rename into place, describe it.
    ///
    /// # Errors
    /// Not an ext4 image of whole sectors (400, field `body`), a state-directory failure.
    pub fn finish_import(&self, mut import: Import) -> Result<ImageInfo, SliverError> {
        let Some(file) = import.file.as_ref() else {
            return Err(SliverError::Internal("import finished twice".into()));
        };
        let bad = |why: String| SliverError::invalid("body", why);
        if import.len == 0 || !import.len.is_multiple_of(512) {
            return Err(bad(format!(
                "{} bytes is not a whole, non-zero number of 512-byte sectors",
                import.len
            )));
        }
        let mut magic = [0u8; 2];
        std::os::unix::fs::FileExt::read_exact_at(file, &mut magic, EXT4_MAGIC_AT)
            .map_err(|_| bad("too short for an ext2/3/4 superblock".into()))?;
        if magic != [0x53, 0xef] {
            return Err(bad(
                "not an ext2/3/4 file system image (no superblock magic 0xEF53 at byte 1080)"
                    .into(),
            ));
        }
        file.sync_all().map_err(io_err(&import.tmp))?;
        std::fs::set_permissions(&import.tmp, std::fs::Permissions::from_mode(0o444))
            .map_err(io_err(&import.tmp))?;
        let target = self.image_path(&import.name);
        if target.exists() {
            return Err(SliverError::conflict(
                Some("name"),
                format!("image {:?} was imported meanwhile", import.name),
            ));
        }
        std::fs::rename(&import.tmp, &target).map_err(io_err(&target))?;
        // In place: nothing for Drop to remove.
        import.file = None;
        let info = ImageInfo {
            name: import.name.clone(),
            size: import.len,
            sha256: hex(&import.hash.clone().finalize()),
            imported_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let info_path = self.info_path(&import.name);
        let json = serde_json::to_vec_pretty(&info)
            .map_err(|e| SliverError::Internal(format!("image description: {e}")))?;
        write_synced(&info_path, &json).map_err(io_err(&info_path))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        log::info!(
            "image {} imported: {} bytes, sha256 {}",
            info.name,
            info.size,
            info.sha256
        );
        Ok(info)
    }

    /// Delete image `name`, refused while a sliver in `users` names it.
    ///
    /// # Errors
    /// No such image (404), in use (409, naming the slivers), a state-directory failure.
    pub fn delete(&self, name: &str, users: &[String]) -> Result<(), SliverError> {
        self.get(name)?;
        if !users.is_empty() {
            return Err(SliverError::conflict(
                Some("name"),
                format!(
                    "image {name:?} is the vref of sliver(s) {}",
                    users.join(", ")
                ),
            ));
        }
        for path in [self.info_path(name), self.image_path(name)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e).into()),
            }
        }
        log::info!("image {name} deleted");
        Ok(())
    }
}

/// An import in progress: its temporary file, how much arrived, its running hash. Dropped
/// unfinished, its file goes.
#[derive(Debug)]
pub struct Import {
    name: String,
    tmp: PathBuf,
    file: Option<std::fs::File>,
    hash: Sha256,
    len: u64,
}

impl Import {
    /// Append `chunk`.
    ///
    /// # Errors
    /// Over [`MAX_IMAGE_BYTES`] (413), a write failure (a full disk is 507).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SliverError> {
        let len = self.len + chunk.len() as u64;
        if len > MAX_IMAGE_BYTES {
            return Err(SliverError::TooLarge {
                len: usize::try_from(len).unwrap_or(usize::MAX),
                max: usize::try_from(MAX_IMAGE_BYTES).unwrap_or(usize::MAX),
            });
        }
        let Some(file) = self.file.as_ref() else {
            return Err(SliverError::Internal("import already finished".into()));
        };
        // Blocks of zeros are left as holes (an image is mostly unused space): write only
        // the 4 KiB blocks that hold data, at their offsets; the size is set at the end.
        let mut at = self.len;
        for block in chunk.chunks(4096) {
            if block.iter().any(|&b| b != 0) {
                std::os::unix::fs::FileExt::write_all_at(file, block, at)
                    .map_err(io_err(&self.tmp))?;
            }
            at += block.len() as u64;
        }
        file.set_len(len).map_err(io_err(&self.tmp))?;
        self.hash.update(chunk);
        self.len = len;
        Ok(())
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `bytes` to `path` through a temporary file, synced, renamed.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext4_like(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[1080] = 0x53;
        b[1081] = 0xef;
        b
    }

    #[test]
    fn import_checks_the_image_and_it_cannot_be_replaced_or_deleted_while_used() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ImageStore::open(dir.path()).expect("store");
        let mut imp = store.begin_import("debian-12").expect("begin");
        imp.write(&ext4_like(4096)).expect("write");
        let info = store.finish_import(imp).expect("finish");
        assert_eq!(info.size, 4096);
        assert_eq!(info.sha256.len(), 64);
        assert_eq!(store.list(), vec![info.clone()]);
        let mode = std::fs::metadata(store.image_path("debian-12"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o222, 0, "read-only");
        assert!(matches!(
            store.begin_import("debian-12"),
            Err(SliverError::Conflict { .. })
        ));
        let e = store
            .delete("debian-12", &["web-1".into()])
            .expect_err("in use");
        assert!(e.to_string().contains("web-1"), "{e}");
        store.delete("debian-12", &[]).expect("delete");
        assert!(matches!(
            store.get("debian-12"),
            Err(SliverError::ImageNotFound(_))
        ));
        // Not ext4, not whole sectors, empty: refused, nothing left behind.
        for bytes in [vec![0u8; 4096], ext4_like(4000), Vec::new()] {
            let mut imp = store.begin_import("bad").expect("begin");
            imp.write(&bytes).expect("write");
            let e = store.finish_import(imp).expect_err("refused");
            assert_eq!(e.field(), Some("body"), "{e}");
        }
        assert!(store.list().is_empty());
        assert_eq!(
            std::fs::read_dir(store.dir()).expect("dir").count(),
            0,
            "no temporary file left"
        );
        assert!(matches!(
            store.begin_import("Bad Name"),
            Err(SliverError::Invalid { .. })
        ));
    }
}
