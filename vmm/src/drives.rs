//! A sliver's disks: for each `--disk`, open the file (locked), make the virtio-blk device,
//! and attach it to the VM. Disks are attached before NICs, so the first `--disk` is
//! `/dev/vda` in a Linux guest.

use std::sync::{Arc, Mutex};

use devices::virtio::block::{BlockCounters, BlockDevice, Disk, DiskError};

use crate::attach::{AttachError, VirtioAttacher};
use crate::disk_spec::DiskSpec;
use crate::event_loop::EventLoop;

/// Errors setting up a disk; each names the `--disk` path or the device (`diskN`).
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    /// The file could not be used (the message names it).
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The device's eventfds could not be made.
    #[error("disk{index}: device eventfds: {source}")]
    Device {
        /// Which disk.
        index: usize,
        /// Why.
        source: std::io::Error,
    },
    /// The transport could not be attached.
    #[error("--disk: {0}")]
    Attach(#[from] AttachError),
}

/// What the VMM keeps of an attached disk.
#[derive(Debug)]
pub struct AttachedDisk {
    /// The host file.
    pub path: std::path::PathBuf,
    /// Request counters.
    pub counters: Arc<BlockCounters>,
}

/// Attach the virtio-blk device of disk number `index`, `spec`; its events go to
/// `event_loop`.
pub fn attach(
    attacher: &mut VirtioAttacher<'_>,
    index: usize,
    spec: &DiskSpec,
    event_loop: &mut EventLoop,
) -> Result<AttachedDisk, DriveError> {
    let disk = Disk::open(&spec.path, spec.read_only, spec.id.as_deref())?;
    let sectors = disk.sectors();
    let device = BlockDevice::new(disk).map_err(|source| DriveError::Device { index, source })?;
    let counters = device.counters();
    let device = Arc::new(Mutex::new(device));
    attacher.attach(device.clone(), &format!("disk{index}"))?;
    event_loop.add_subscriber(Box::new(device));
    log::info!(
        "disk{index}: {} ({} MiB{})",
        spec.path.display(),
        sectors / 2048,
        if spec.read_only { ", read-only" } else { "" }
    );
    Ok(AttachedDisk {
        path: spec.path.clone(),
        counters,
    })
}

/// The root-disk kernel argument for `disks` when the guest boots from the first one: no
/// initrd and no `root=` of the user's.
pub fn root_arg(
    disks: &[DiskSpec],
    has_initrd: bool,
    user_cmdline: Option<&str>,
) -> Option<String> {
    let first = disks.first()?;
    let user_root =
        user_cmdline.is_some_and(|c| c.split_whitespace().any(|w| w.starts_with("root=")));
    (!has_initrd && !user_root).then(|| {
        format!(
            "root=/dev/vda {}",
            if first.read_only { "ro" } else { "rw" }
        )
    })
}

/// Log each disk's counters (when the VM ends).
pub fn log_counters(disks: &[AttachedDisk]) {
    for (i, d) in disks.iter().enumerate() {
        let c = d.counters.snapshot();
        log::info!(
            "disk{i} ({}): {} reads {} bytes, {} writes {} bytes, {} flushes, {} discards; {} errors, {} unsupported, {} malformed chains",
            d.path.display(), c.read_ops, c.read_bytes, c.write_ops, c.write_bytes, c.flush_ops,
            c.discard_ops, c.errors, c.unsupported, c.malformed_chains
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_disk_is_root_unless_an_initrd_or_root_is_given() {
        let rw: DiskSpec = "path=a".parse().expect("spec");
        let ro: DiskSpec = "path=a,ro".parse().expect("spec");
        assert_eq!(root_arg(&[], false, None), None);
        assert_eq!(
            root_arg(std::slice::from_ref(&rw), false, None).as_deref(),
            Some("root=/dev/vda rw")
        );
        assert_eq!(
            root_arg(&[ro], false, Some("quiet")).as_deref(),
            Some("root=/dev/vda ro")
        );
        assert_eq!(root_arg(std::slice::from_ref(&rw), true, None), None);
        assert_eq!(root_arg(&[rw], false, Some("root=/dev/vdb")), None);
    }
}
