use super::*;

fn config(slots: u64) -> CaptureConfig {
    CaptureConfig {
        enabled: true,
        snaplen: 64,
        bytes: HEADER as u64 + slots * (SLOT_HEADER as u64 + 64),
    }
}

fn frame(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize + j) as u8).collect()
}

#[test]
fn the_ring_keeps_the_newest_packets_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    let mut ring = CaptureRing::open(&path, &config(10)).expect("open");
    assert_eq!(ring.geometry().slots, 10);
    for i in 0..25u64 {
        let verdict = Verdict::ALL[(i % 4) as usize];
        ring.push(
            1_000 + i,
            (i % 2) as u8,
            Direction::Rx,
            verdict,
            1500,
            &frame(i, 100),
        );
    }
    ring.flush_async().expect("msync");
    let got = read_ring(&path).expect("read");
    assert_eq!(got.torn, 0);
    let seqs: Vec<u64> = got.packets.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (16..=25).collect::<Vec<_>>());
    let last = got.packets.last().expect("a packet");
    assert_eq!(last.ts_ns, 1_024);
    assert_eq!(last.data, frame(24, 64), "cut to the snap length");
    assert_eq!(
        (last.orig_len, last.nic, last.verdict),
        (1500, 0, Verdict::Forwarded)
    );
    assert!(matches!(
        CaptureRing::open(&path, &config(10)),
        Err(AuditError::Locked { .. })
    ));
    drop(ring);
    let mut ring = CaptureRing::open(&path, &config(10)).expect("reopen");
    ring.push(
        2_000,
        0,
        Direction::Tx,
        Verdict::DroppedSpoof,
        60,
        &frame(0, 60),
    );
    let got = read_ring(&path).expect("read");
    let last = got.packets.last().expect("a packet");
    assert_eq!((last.seq, last.data.len()), (26, 60), "numbering continues");
}

#[test]
fn a_torn_slot_is_skipped_and_a_new_geometry_starts_afresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    let mut ring = CaptureRing::open(&path, &config(4)).expect("open");
    for i in 0..3u64 {
        ring.push(i, 0, Direction::Tx, Verdict::Forwarded, 80, &frame(i, 80));
    }
    drop(ring);
    let mut raw = fs::read(&path).expect("read");
    raw[HEADER + (SLOT_HEADER + 64) + SLOT_HEADER + 5] ^= 0xff; // data of the second slot
    fs::write(&path, raw).expect("write");
    let got = read_ring(&path).expect("read");
    assert_eq!(got.torn, 1);
    assert_eq!(
        got.packets.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [1, 3]
    );
    let bigger = CaptureConfig {
        snaplen: 128,
        ..config(4)
    };
    drop(CaptureRing::open(&path, &bigger).expect("re-create"));
    let got = read_ring(&path).expect("read");
    assert!(got.packets.is_empty());
    assert_eq!(got.geometry.snaplen, 128);
    fs::write(&path, b"not a ring").expect("write");
    assert!(matches!(read_ring(&path), Err(AuditError::Format { .. })));
    let tiny = CaptureConfig {
        bytes: 100,
        ..CaptureConfig::default()
    };
    assert!(CaptureRing::open(&path, &tiny).is_err());
}
