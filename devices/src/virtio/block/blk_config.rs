//! virtio-blk configuration space (`struct virtio_blk_config`, virtio 1.2 section 5.2.4),
//! little-endian, up to `write_zeroes_may_unmap`.

use super::{MAX_RANGES, MAX_RANGE_SECTORS, SECTOR_SIZE, SEG_MAX};

/// Bytes of `struct virtio_blk_config` the device fills.
pub const CONFIG_LEN: usize = 60;

/// Offsets of the fields the device sets (a test checks them against `virtio_blk.h`).
mod at {
    pub const CAPACITY: usize = 0;
    pub const SEG_MAX: usize = 12;
    pub const BLK_SIZE: usize = 20;
    pub const NUM_QUEUES: usize = 34;
    pub const MAX_DISCARD_SECTORS: usize = 36;
    pub const MAX_DISCARD_SEG: usize = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

/// The configuration space of a disk of `capacity` sectors: one queue, [`SEG_MAX`]
/// segments, 512-byte blocks, and the discard and write-zeroes limits.
pub fn config_bytes(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(at::CAPACITY, &capacity.to_le_bytes());
    put(at::SEG_MAX, &SEG_MAX.to_le_bytes());
    let blk_size = u32::try_from(SECTOR_SIZE).unwrap_or(512);
    put(at::BLK_SIZE, &blk_size.to_le_bytes());
    put(at::NUM_QUEUES, &1u16.to_le_bytes());
    put(at::MAX_DISCARD_SECTORS, &MAX_RANGE_SECTORS.to_le_bytes());
    put(at::MAX_DISCARD_SEG, &MAX_RANGES.to_le_bytes());
    // Discards are done in whole 4 KiB pages of the host file; the driver aligns to this.
    put(at::DISCARD_SECTOR_ALIGNMENT, &8u32.to_le_bytes());
    put(
        at::MAX_WRITE_ZEROES_SECTORS,
        &MAX_RANGE_SECTORS.to_le_bytes(),
    );
    put(at::MAX_WRITE_ZEROES_SEG, &MAX_RANGES.to_le_bytes());
    put(at::WRITE_ZEROES_MAY_UNMAP, &[1]);
    c
}

#[cfg(test)]
mod tests {
    use std::mem::offset_of;

    use virtio_bindings::virtio_blk::virtio_blk_config as c;

    use super::*;

    #[test]
    fn offsets_are_virtio_blk_h() {
        assert_eq!(offset_of!(c, capacity), at::CAPACITY);
        assert_eq!(offset_of!(c, seg_max), at::SEG_MAX);
        assert_eq!(offset_of!(c, blk_size), at::BLK_SIZE);
        assert_eq!(offset_of!(c, num_queues), at::NUM_QUEUES);
        assert_eq!(offset_of!(c, max_discard_sectors), at::MAX_DISCARD_SECTORS);
        assert_eq!(offset_of!(c, max_discard_seg), at::MAX_DISCARD_SEG);
        assert_eq!(
            offset_of!(c, discard_sector_alignment),
            at::DISCARD_SECTOR_ALIGNMENT
        );
        assert_eq!(
            offset_of!(c, max_write_zeroes_sectors),
            at::MAX_WRITE_ZEROES_SECTORS
        );
        assert_eq!(
            offset_of!(c, max_write_zeroes_seg),
            at::MAX_WRITE_ZEROES_SEG
        );
        assert_eq!(
            offset_of!(c, write_zeroes_may_unmap),
            at::WRITE_ZEROES_MAY_UNMAP
        );
        assert_eq!(offset_of!(c, unused1) + 3, CONFIG_LEN);
    }

    #[test]
    fn capacity_and_limits_are_little_endian() {
        let b = config_bytes(0x0102_0304_0506);
        assert_eq!(&b[..8], &[6, 5, 4, 3, 2, 1, 0, 0]);
        assert_eq!(&b[12..16], &254u32.to_le_bytes());
        assert_eq!(&b[20..24], &512u32.to_le_bytes());
        assert_eq!(b[56], 1);
    }
}
