//! Every request type and feature of the device, as a well-behaved driver uses them.

use std::os::unix::fs::MetadataExt;

use crate::fixture::*;

/// virtio 1.2 section 5.2.6: status values.
const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn config_u32(f: &mut Fixture, at: u32) -> u32 {
    f.driver.read_reg(0x100 + at)
}

#[test]
fn handshake_offers_block_features_and_config() {
    let mut f = fixture();
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_DEVICE_ID), 2, "block");
    assert_eq!(f.driver.device_features(), RW_FEATURES);
    assert_ne!(f.driver.status() & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    // struct virtio_blk_config: capacity (sectors) at 0, seg_max at 12, blk_size at 20.
    let capacity = u64::from(config_u32(&mut f, 0)) | (u64::from(config_u32(&mut f, 4)) << 32);
    assert_eq!(capacity, DISK_BYTES / 512);
    assert_eq!(config_u32(&mut f, 12), 254);
    assert_eq!(config_u32(&mut f, 20), 512);
    let ro = fixture_with(true, feature(VIRTIO_F_VERSION_1));
    let mut ro = ro;
    let offered = ro.driver.device_features();
    assert_ne!(offered & feature(VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        offered
            & (feature(VIRTIO_BLK_F_FLUSH)
                | feature(VIRTIO_BLK_F_DISCARD)
                | feature(VIRTIO_BLK_F_WRITE_ZEROES)),
        0,
        "a read-only disk offers no FLUSH, DISCARD or WRITE_ZEROES"
    );
}

#[test]
fn writes_read_back_across_segments_and_reach_the_file() {
    let mut f = fixture();
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(f.write(10, &data), OK);
    // Read it back split over three buffers of 512, 1024 and 2560 bytes.
    let bufs = [
        (DATA_AT, 512),
        (DATA_AT + 0x2000, 1024),
        (DATA_AT + 0x4000, 2560),
    ];
    for (addr, len) in bufs {
        f.driver.mem_write(addr, &vec![0xee; len]);
    }
    let data_bufs: Vec<Buf> = bufs
        .iter()
        .map(|&(addr, len)| Buf {
            addr,
            len: len as u32,
            writable: true,
        })
        .collect();
    let (status, used) = f.request(VIRTIO_BLK_T_IN, 10, &data_bufs);
    assert_eq!(
        (status, used),
        (OK, 4096 + 1),
        "used length: data and status"
    );
    let mut back = Vec::new();
    for (addr, len) in bufs {
        back.extend(f.driver.read_mem(addr, len));
    }
    assert_eq!(back, data);
    let on_disk = std::fs::read(f.file.path()).expect("file");
    assert_eq!(&on_disk[10 * 512..10 * 512 + 4096], &data[..]);
    let s = f.snap();
    assert_eq!(
        (s.write_ops, s.write_bytes, s.read_ops, s.read_bytes),
        (1, 4096, 1, 4096)
    );
}

#[test]
fn a_header_split_over_descriptors_and_data_sharing_the_status_buffer_work() {
    let mut f = fixture();
    assert_eq!(f.write(0, &[7u8; 512]), OK);
    // Header in two 8-byte descriptors; the 512 data bytes and the status byte in one
    // device-writable 513-byte buffer (virtio 1.x: no framing is assumed).
    let h = header(VIRTIO_BLK_T_IN, 0);
    f.driver.mem_write(HEADER_AT, &h[..8]);
    f.driver.mem_write(HEADER_AT + 0x40, &h[8..]);
    let used = f
        .submit(&[
            (HEADER_AT, 8, false),
            (HEADER_AT + 0x40, 8, false),
            (DATA_AT, 513, true),
        ])
        .expect("answered");
    assert_eq!(used, 513);
    let back = f.driver.read_mem(DATA_AT, 513);
    assert_eq!(&back[..512], &[7u8; 512][..]);
    assert_eq!(back[512], OK, "the status is the chain's last byte");
}

#[test]
fn get_id_flush_discard_and_write_zeroes() {
    let mut f = fixture();
    let (status, used) = f.request(
        VIRTIO_BLK_T_GET_ID,
        0,
        &[Buf {
            addr: DATA_AT,
            len: 20,
            writable: true,
        }],
    );
    assert_eq!((status, used), (OK, 21));
    assert_eq!(&f.driver.read_mem(DATA_AT, 20)[..11], b"slv-disk-0\0");
    assert_eq!(f.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (OK, 1));
    // Fill 256 KiB, then discard 128 KiB of it: zeros, and the file takes less space.
    let chunk = vec![0xabu8; 64 * 1024];
    for i in 0..4 {
        assert_eq!(f.write(i * 128, &chunk), OK);
    }
    f.file.as_file().sync_all().expect("sync");
    let before = f.file.as_file().metadata().expect("meta").blocks();
    let range = |sector: u64, sectors: u32, flags: u32| {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&sectors.to_le_bytes());
        r[12..].copy_from_slice(&flags.to_le_bytes());
        r
    };
    f.driver.mem_write(DATA_AT, &range(0, 256, 0));
    let one_range = [Buf {
        addr: DATA_AT,
        len: 16,
        writable: false,
    }];
    assert_eq!(f.request(VIRTIO_BLK_T_DISCARD, 0, &one_range).0, OK);
    let after = f.file.as_file().metadata().expect("meta").blocks();
    assert!(
        after + 256 <= before,
        "{before} -> {after} blocks of 512 B: space given back"
    );
    assert_eq!(f.read(0, 4096), (OK, vec![0u8; 4096]));
    // WRITE_ZEROES with and without the unmap flag (bit 0).
    for flags in [0, 1] {
        f.driver.mem_write(DATA_AT, &range(256, 8, flags));
        assert_eq!(f.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &one_range).0, OK);
        assert_eq!(f.read(256, 4096), (OK, vec![0u8; 4096]));
        assert_eq!(f.write(256, &chunk[..4096]), OK);
    }
    let s = f.snap();
    assert_eq!(
        (s.flush_ops, s.discard_ops, s.errors, s.unsupported),
        (1, 3, 0, 0)
    );
}

#[test]
fn a_read_only_disk_refuses_writes_and_unoffered_requests() {
    let mut f = fixture_with(true, feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_BLK_F_RO));
    assert_eq!(f.read(0, 512), (OK, vec![0u8; 512]));
    assert_eq!(f.write(0, &[1u8; 512]), IOERR);
    assert_eq!(f.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, UNSUPP);
    f.driver.mem_write(DATA_AT, &[0u8; 16]);
    let range = [Buf {
        addr: DATA_AT,
        len: 16,
        writable: false,
    }];
    assert_eq!(f.request(VIRTIO_BLK_T_DISCARD, 0, &range).0, UNSUPP);
    assert_eq!(f.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &range).0, UNSUPP);
    assert!(std::fs::read(f.file.path())
        .expect("file")
        .iter()
        .all(|&b| b == 0));
    let s = f.snap();
    assert_eq!((s.errors, s.unsupported, s.write_ops), (1, 3, 0));
}
