//! A malicious or broken guest against virtio-blk: each request fails with the right status
//! or is returned unanswered with a counter moving, or the device goes to NEEDS_RESET; the
//! device works again afterwards (after a reset where it needed one).

use crate::fixture::*;

const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn writable(len: u32) -> [Buf; 1] {
    [Buf {
        addr: DATA_AT,
        len,
        writable: true,
    }]
}

fn readable(len: u32) -> [Buf; 1] {
    [Buf {
        addr: DATA_AT,
        len,
        writable: false,
    }]
}

#[test]
fn reads_and_writes_past_the_end_zero_length_or_misaligned_get_ioerr() {
    let mut f = fixture();
    let sectors = DISK_BYTES / 512;
    assert_eq!(f.read(sectors, 512).0, IOERR, "first sector past the end");
    assert_eq!(f.read(sectors - 1, 1024).0, IOERR, "straddling the end");
    assert_eq!(f.read(u64::MAX, 512).0, IOERR, "sector + length overflows");
    assert_eq!(f.write(sectors - 1, &[1u8; 1024]), IOERR);
    assert_eq!(f.request(VIRTIO_BLK_T_IN, 0, &[]).0, IOERR, "no data");
    assert_eq!(f.read(0, 100).0, IOERR, "not whole sectors");
    assert_eq!(f.write(0, &[1u8; 700]), IOERR);
    // Data in the wrong direction: a read into a device-readable buffer, a write from a
    // device-writable one.
    assert_eq!(f.request(VIRTIO_BLK_T_IN, 0, &readable(512)).0, IOERR);
    assert_eq!(f.request(VIRTIO_BLK_T_OUT, 0, &writable(512)).0, IOERR);
    assert!(std::fs::read(f.file.path())
        .expect("file")
        .iter()
        .all(|&b| b == 0));
    assert_eq!(f.snap().errors, 9);
    f.assert_still_works();
}

#[test]
fn unknown_types_flags_and_unnegotiated_features_get_unsupp() {
    // The driver did not accept FLUSH, DISCARD or WRITE_ZEROES.
    let mut f = fixture_with(false, feature(VIRTIO_F_VERSION_1));
    assert_eq!(f.request(VIRTIO_BLK_T_FLUSH, 0, &[]).0, UNSUPP);
    f.driver.mem_write(DATA_AT, &[0u8; 16]);
    assert_eq!(f.request(VIRTIO_BLK_T_DISCARD, 0, &readable(16)).0, UNSUPP);
    assert_eq!(
        f.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &readable(16)).0,
        UNSUPP
    );
    assert_eq!(f.request(0xdead, 0, &[]).0, UNSUPP, "unknown type");
    assert_eq!(
        f.request(VIRTIO_BLK_T_SCSI_CMD, 0, &[]).0,
        UNSUPP,
        "legacy SCSI"
    );
    let mut f = fixture();
    // DISCARD with the unmap flag (virtio 1.2 section 5.2.6.2: UNSUPP), WRITE_ZEROES with a
    // reserved flag.
    let range = |flags: u32| {
        let mut r = [0u8; 16];
        r[8..12].copy_from_slice(&8u32.to_le_bytes());
        r[12..].copy_from_slice(&flags.to_le_bytes());
        r
    };
    f.driver.mem_write(DATA_AT, &range(1));
    assert_eq!(f.request(VIRTIO_BLK_T_DISCARD, 0, &readable(16)).0, UNSUPP);
    f.driver.mem_write(DATA_AT, &range(2));
    assert_eq!(
        f.request(VIRTIO_BLK_T_WRITE_ZEROES, 0, &readable(16)).0,
        UNSUPP
    );
    assert_eq!(f.snap().unsupported, 2);
    f.assert_still_works();
}

#[test]
fn bad_discard_ranges_get_ioerr() {
    let mut f = fixture();
    let entry = |sector: u64, sectors: u32| {
        let mut r = [0u8; 16];
        r[..8].copy_from_slice(&sector.to_le_bytes());
        r[8..12].copy_from_slice(&sectors.to_le_bytes());
        r
    };
    let sectors = DISK_BYTES / 512;
    for (what, bytes) in [
        ("past the end", entry(sectors - 4, 8).to_vec()),
        ("empty range", entry(0, 0).to_vec()),
        ("half an entry", entry(0, 8)[..8].to_vec()),
        ("65 ranges", entry(0, 8).repeat(65)),
    ] {
        f.driver.mem_write(DATA_AT, &bytes);
        let len = u32::try_from(bytes.len()).expect("len");
        assert_eq!(
            f.request(VIRTIO_BLK_T_DISCARD, 0, &readable(len)).0,
            IOERR,
            "{what}"
        );
    }
    assert_eq!(
        f.request(VIRTIO_BLK_T_DISCARD, 0, &[]).0,
        IOERR,
        "no ranges"
    );
    f.assert_still_works();
}

#[test]
fn chains_without_a_writable_status_byte_are_returned_unanswered() {
    let mut f = fixture();
    f.driver.mem_write(HEADER_AT, &header(VIRTIO_BLK_T_IN, 0));
    // The status byte in a device-readable descriptor.
    assert_eq!(
        f.submit(&[(HEADER_AT, 16, false), (STATUS_AT, 1, false)]),
        Some(0)
    );
    // Only a header.
    assert_eq!(f.submit(&[(HEADER_AT, 16, false)]), Some(0));
    // A zero-length last descriptor.
    assert_eq!(
        f.submit(&[(HEADER_AT, 16, false), (STATUS_AT, 0, true)]),
        Some(0)
    );
    assert_eq!(f.status(), 0xff, "nothing written");
    assert_eq!(f.snap().malformed_chains, 3);
    // A readable descriptor after a writable one: the status is there to say IOERR.
    let used = f.submit(&[
        (HEADER_AT, 16, false),
        (DATA_AT, 512, true),
        (DATA_AT + 0x1000, 512, false),
        (STATUS_AT, 1, true),
    ]);
    assert_eq!((used, f.status()), (Some(1), IOERR));
    // A header shorter than 16 bytes.
    assert_eq!(
        f.submit(&[(HEADER_AT, 12, false), (STATUS_AT, 1, true)]),
        Some(1)
    );
    assert_eq!(f.status(), IOERR);
    f.assert_still_works();
}

#[test]
fn buffers_outside_memory_loops_and_long_chains_are_dropped() {
    let mut f = fixture();
    f.driver.mem_write(HEADER_AT, &header(VIRTIO_BLK_T_IN, 0));
    // A data buffer past the end of guest memory.
    assert_eq!(
        f.submit(&[
            (HEADER_AT, 16, false),
            (1 << 40, 512, true),
            (STATUS_AT, 1, true)
        ]),
        Some(0)
    );
    // A descriptor loop: 0 -> 1 -> 0.
    f.driver.write_desc(
        Q,
        100,
        RawDesc {
            addr: HEADER_AT,
            len: 16,
            flags: 1, // NEXT
            next: 101,
        },
    );
    f.driver.write_desc(
        Q,
        101,
        RawDesc {
            addr: STATUS_AT,
            len: 1,
            flags: 1 | 2, // NEXT | WRITE
            next: 100,
        },
    );
    f.driver.publish(Q, 100);
    f.driver.kick(Q);
    f.pump();
    assert_eq!(f.driver.take_used(Q), vec![(100, 0)]);
    assert_eq!(f.snap().malformed_chains, 2);
    f.assert_still_works();
}

#[test]
fn an_avail_index_jump_needs_reset_and_a_reset_recovers() {
    let mut f = fixture();
    f.driver.set_avail_idx(Q, 1000);
    f.driver.kick(Q);
    f.pump();
    assert_ne!(f.driver.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(f.snap().needs_reset, 1);
    f.driver.init(RW_FEATURES, 1, QUEUE_SIZE);
    f.pump();
    let mut f2 = f;
    f2.assert_still_works();
}
