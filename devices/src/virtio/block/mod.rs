//! virtio-blk (virtio 1.2, section 5.2) on a host file, over the same virtio-mmio transport
//! as virtio-net: one request queue; IN, OUT, FLUSH, GET_ID, DISCARD and WRITE_ZEROES; the
//! RO, FLUSH, SEG_MAX, BLK_SIZE, DISCARD and WRITE_ZEROES features.
//!
//! Each request goes through [`request::parse`] (chain shape, directions, lengths, sector
//! range; a request that fails gets its status byte, a chain without one is dropped and
//! counted) and then [`disk::Disk`] (`preadv`/`pwritev` straight between the file and guest
//! memory, `fdatasync` for FLUSH, `fallocate` for DISCARD and WRITE_ZEROES). The I/O runs on
//! the VMM's event loop thread, never on a vCPU thread.

// Casts in guest-facing code must not truncate or wrap silently.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]

pub mod blk_config;
pub mod blk_counters;
pub mod blk_device;
pub mod disk;
pub mod request;

pub use blk_counters::{BlockCounters, BlockCountersSnapshot};
pub use blk_device::BlockDevice;
pub use disk::{Disk, DiskError};

/// Descriptors in the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Bytes of a sector: the unit of `sector` and of capacity (virtio 1.2 section 5.2.6).
pub const SECTOR_SIZE: u64 = 512;
/// The request header: type u32, reserved u32, sector u64 (`struct virtio_blk_req`).
pub const HEADER_LEN: usize = 16;
/// Bytes of a GET_ID answer (`VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;
/// Data segments a request may have (SEG_MAX): the queue less the header and the status.
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Sectors one DISCARD or WRITE_ZEROES range may cover (`max_discard_sectors`,
/// `max_write_zeroes_sectors`): 4 GiB less a sector.
pub const MAX_RANGE_SECTORS: u32 = u32::MAX >> 9;
/// Ranges one DISCARD or WRITE_ZEROES request may carry (`max_discard_seg`).
pub const MAX_RANGES: u32 = 64;
