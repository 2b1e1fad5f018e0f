use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;

/// Settings for a ring of `slots` slots of snap length 64.
fn config(slots: u64) -> CaptureConfig {
    let slot_size = (slot::HEADER + 64 + slot::TRAILER) as u64;
    CaptureConfig {
        enabled: true,
        snaplen: 64,
        bytes: HEADER as u64 + slots * slot_size,
    }
}

/// Packet `i`'s bytes: a function of `i`, so that a reader can tell a mixed slot.
fn frame(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 7 + j) as u8).collect()
}

fn header(seq: u64) -> SlotHeader {
    SlotHeader {
        seq,
        ts_ns: 1_000 + seq,
        nic: (seq % 2) as u8,
        direction: Direction::ALL[(seq % 2) as usize],
        verdict: Verdict::ALL[(seq % 4) as usize],
        orig_len: 1_500 + seq as u32,
    }
}

/// Push packets `seqs` (seq numbering is the ring's: they must follow on from its next).
fn push_all(ring: &mut CaptureRing, seqs: impl IntoIterator<Item = u64>) {
    for i in seqs {
        let h = header(i);
        ring.push(
            h.ts_ns,
            h.nic,
            h.direction,
            h.verdict,
            h.orig_len,
            &frame(i, 100),
        );
    }
}

/// A closed ring of `slots` slots in a new directory, holding packets `seqs` (from 1).
fn ring_holding(
    slots: u64,
    seqs: std::ops::RangeInclusive<u64>,
) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    let mut ring = CaptureRing::open(&path, &config(slots)).expect("open");
    push_all(&mut ring, seqs);
    (dir, path)
}

/// Check that `p` is exactly packet `p.seq` as [`header`] and [`frame`] make it.
fn assert_whole(p: &CapturedPacket, snaplen: usize) {
    let h = header(p.seq);
    assert_eq!(
        (p.ts_ns, p.nic, p.direction, p.verdict, p.orig_len),
        (h.ts_ns, h.nic, h.direction, h.verdict, h.orig_len),
        "packet {}'s fields",
        p.seq
    );
    assert_eq!(
        p.data,
        frame(p.seq, 100)[..snaplen],
        "packet {}'s data",
        p.seq
    );
}

#[test]
fn the_ring_keeps_the_newest_packets_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    let mut ring = CaptureRing::open(&path, &config(10)).expect("open");
    assert_eq!(ring.geometry().slots, 10);
    push_all(&mut ring, 1..=25);
    ring.flush_async().expect("msync");
    let got = read_ring(&path).expect("read");
    assert_eq!(got.torn, 0);
    let seqs: Vec<u64> = got.packets.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, (16..=25).collect::<Vec<_>>());
    for p in &got.packets {
        assert_whole(p, 64);
    }
    assert!(matches!(
        CaptureRing::open(&path, &config(10)),
        Err(AuditError::Locked { .. })
    ));
    drop(ring);
    let stale = dir.path().join("capture.ring.new");
    fs::write(&stale, b"left by a writer killed while re-making").expect("write");
    let mut ring = CaptureRing::open(&path, &config(10)).expect("reopen");
    assert!(!stale.exists(), "a stale re-made ring is removed");
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
fn the_slot_layout_is_the_documented_one() {
    let mut slot = vec![0u8; slot::HEADER + 64 + slot::TRAILER];
    let h = header(0x0102_0304_0506_0708);
    slot::write(&mut slot, &h, &[0xaa; 60]);
    let seq = 0x0102_0304_0506_0708u64.to_le_bytes();
    assert_eq!(slot[0..8], seq, "leading seq");
    assert_eq!(slot[8..16], h.ts_ns.to_le_bytes(), "ts_ns");
    assert_eq!(slot[16..20], h.orig_len.to_le_bytes(), "orig_len");
    assert_eq!(slot[20..22], 60u16.to_le_bytes(), "caplen");
    assert_eq!(
        slot[22..25],
        [h.nic, h.direction.code(), h.verdict.code()],
        "nic, direction, verdict"
    );
    assert_eq!(slot[25..32], [0; 7], "pad");
    assert_eq!(slot[32..92], [0xaa; 60], "data");
    assert_eq!(slot[96..104], seq, "trailing seq");
}

/// Every state a slot passes through while packet 12 overwrites packet 2, and every mix of
/// the two a page-wise write-back can leave (a prefix of one, the rest of the other), reads
/// as one whole packet or as none.
#[test]
fn a_slot_cut_short_anywhere_reads_as_one_whole_packet_or_none() {
    let len = slot::HEADER + 64 + slot::TRAILER;
    let mut old = vec![0u8; len];
    slot::write(&mut old, &header(2), &frame(2, 64));
    let mut new = old.clone();
    slot::write(&mut new, &header(12), &frame(12, 64));
    // The writer's steps, in its order: leading word 0, trailing word 0, body, trailing
    // word, leading word.
    let mut steps = vec![old.clone()];
    let mut s = old.clone();
    s[..8].fill(0);
    steps.push(s.clone());
    s[len - 8..].fill(0);
    steps.push(s.clone());
    for at in 8..len - 8 {
        s[at] = new[at];
        steps.push(s.clone());
    }
    s[len - 8..].copy_from_slice(&new[len - 8..]);
    steps.push(s.clone());
    assert_eq!(slot::read(&s), None, "the leading word is the commit");
    s[..8].copy_from_slice(&new[..8]);
    assert_eq!(s, new);
    let mut wholes = 0;
    for (i, a) in steps.iter().enumerate() {
        for b in &steps[i..] {
            for cut in 0..=len {
                // The first part written back at step `a`, the rest at the later step `b`,
                // or the other way round.
                for (first, rest) in [(a, b), (b, a)] {
                    let mut mix = first[..cut].to_vec();
                    mix.extend_from_slice(&rest[cut..]);
                    if let Some(p) = slot::read(&mix) {
                        assert!([2, 12].contains(&p.seq), "seq {}", p.seq);
                        assert_whole(&p, 64);
                        wholes += 1;
                    }
                }
            }
        }
    }
    assert!(wholes > 0);
}

#[test]
fn a_reader_racing_the_writer_sees_only_whole_packets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    let mut ring = CaptureRing::open(&path, &config(64)).expect("open");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                push_all(&mut ring, [seq]);
            }
            seq
        })
    };
    let (mut packets, mut torn, mut rewritten) = (0, 0, 0);
    for _ in 0..2_000 {
        let got = read_ring(&path).expect("read");
        torn += got.torn;
        rewritten += got.rewritten;
        for p in &got.packets {
            assert_whole(p, 64);
        }
        packets += got.packets.len();
    }
    stop.store(true, Ordering::Relaxed);
    let pushed = writer.join().expect("writer");
    assert!(
        pushed > 64 && packets > 0,
        "{pushed} pushed, {packets} read"
    );
    assert!(rewritten > 0, "the reads never overlapped a write");
    eprintln!(
        "{pushed} pushed; 2000 reads saw {packets} whole packets, skipped {rewritten} \
         rewritten and {torn} torn slots"
    );
}

/// Write a version 1 ring of `slots` slots (snap length 64) holding packets `seqs`.
fn write_v1_ring(path: &Path, slots: usize, seqs: std::ops::RangeInclusive<u64>) {
    let slot_size = slot::HEADER + 64;
    let mut buf = vec![0u8; HEADER + slots * slot_size];
    buf[..4].copy_from_slice(b"SVCR");
    buf[4..8].copy_from_slice(&1u32.to_le_bytes());
    buf[8..12].copy_from_slice(&(slot_size as u32).to_le_bytes());
    buf[12..16].copy_from_slice(&(slots as u32).to_le_bytes());
    buf[16..20].copy_from_slice(&64u32.to_le_bytes());
    for seq in seqs {
        let at = HEADER + ((seq - 1) as usize % slots) * slot_size;
        slot::write_v1(&mut buf[at..at + slot_size], &header(seq), &frame(seq, 64));
    }
    fs::write(path, buf).expect("write");
}

#[test]
fn a_version_1_ring_is_read_and_carried_over_to_version_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    write_v1_ring(&path, 8, 1..=13);
    let got = read_ring(&path).expect("read v1");
    assert_eq!(
        got.packets.iter().map(|p| p.seq).collect::<Vec<_>>(),
        (6..=13).collect::<Vec<_>>()
    );
    got.packets.iter().for_each(|p| assert_whole(p, 64));
    // A torn v1 slot (its CRC fails) is skipped and counted.
    let mut raw = fs::read(&path).expect("read");
    raw[HEADER + slot::HEADER + 5] ^= 0xff; // data of the first slot (seq 9)
    fs::write(&path, raw).expect("write");
    assert_eq!(read_ring(&path).expect("read").torn, 1);

    // What a ring of 6 slots keeps: the valid packets within 6 of the newest (9 is torn).
    let raw = fs::read(&path).expect("read");
    let (version, g) = RingGeometry::parse(&raw).expect("a ring");
    let kept: Vec<u64> = newest_packets(&raw, version, g, 6)
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(kept, [8, 10, 11, 12, 13]);

    // Re-made as version 2 with 6 slots: those packets stay, numbering continues.
    let mut ring = CaptureRing::open(&path, &config(6)).expect("open");
    assert!(!dir.path().join("capture.ring.new").exists());
    let got = read_ring(&path).expect("read v2");
    assert_eq!(
        (got.torn, got.geometry),
        (0, config(6).geometry().expect("geometry"))
    );
    assert_eq!(got.packets.iter().map(|p| p.seq).collect::<Vec<_>>(), kept);
    got.packets.iter().for_each(|p| assert_whole(p, 64));
    push_all(&mut ring, [14]);
    let got = read_ring(&path).expect("read v2");
    let seqs: Vec<u64> = got.packets.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, [10, 11, 12, 13, 14], "14 took 8's slot");
}

#[test]
fn a_new_geometry_keeps_the_newest_packets_cut_to_the_new_snap_length() {
    let (_dir, path) = ring_holding(4, 1..=3);
    let smaller = CaptureConfig {
        snaplen: 40,
        ..config(2)
    };
    drop(CaptureRing::open(&path, &smaller).expect("re-make"));
    let got = read_ring(&path).expect("read");
    assert_eq!(got.geometry.snaplen, 40);
    assert_eq!(
        got.packets.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [2, 3]
    );
    got.packets.iter().for_each(|p| assert_whole(p, 40));

    fs::write(&path, b"not a ring").expect("write");
    assert!(matches!(read_ring(&path), Err(AuditError::Format { .. })));
    drop(CaptureRing::open(&path, &config(4)).expect("a non-ring is replaced"));
    assert!(read_ring(&path).expect("read").packets.is_empty());
    let tiny = CaptureConfig {
        bytes: 100,
        ..CaptureConfig::default()
    };
    assert!(CaptureRing::open(&path, &tiny).is_err());
}

/// A writer killed between its two commit words leaves a slot whose trailing word holds a seq
/// no valid slot has: the next writer starts after it, so that no two packets ever share a
/// seq (their halves could then pass as one).
#[test]
fn numbering_goes_on_after_the_seq_of_a_slot_cut_short() {
    let (_dir, path) = ring_holding(10, 1..=5);
    let mut raw = fs::read(&path).expect("read");
    let g = config(10).geometry().expect("geometry");
    let at = g.slot_at(6);
    let mut cut = vec![0u8; g.slot_size];
    slot::write(&mut cut, &header(6), &frame(6, 64));
    cut[..8].fill(0); // the leading word not yet stored
    raw[at..at + g.slot_size].copy_from_slice(&cut);
    fs::write(&path, raw).expect("write");
    assert_eq!(read_ring(&path).expect("read").torn, 1);
    let mut ring = CaptureRing::open(&path, &config(10)).expect("reopen");
    ring.push(0, 0, Direction::Tx, Verdict::Forwarded, 60, &frame(7, 60));
    let got = read_ring(&path).expect("read");
    assert_eq!(got.packets.last().map(|p| p.seq), Some(7));
}

/// A ring file whose slot holds the highest seq there is, or one past half the range (damage:
/// no ring lives that long): no overflow, whether it is reopened as it is or re-made for
/// another geometry; the ring starts again.
#[test]
fn a_ring_at_the_last_seq_starts_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    let cases = [
        (u64::MAX, config(4)),
        (u64::MAX, config(3)),
        (1 << 63, config(4)),
    ];
    for (seq, wanted) in cases {
        let _ = fs::remove_file(&path);
        drop(CaptureRing::open(&path, &config(4)).expect("open"));
        let mut raw = fs::read(&path).expect("read");
        let g = config(4).geometry().expect("geometry");
        let last = SlotHeader { seq, ..header(1) };
        slot::write(&mut raw[HEADER..HEADER + g.slot_size], &last, &[1; 60]);
        fs::write(&path, raw).expect("write");
        assert_eq!(read_ring(&path).expect("read").packets.len(), 1);
        let mut ring = CaptureRing::open(&path, &wanted).expect("reopen");
        ring.push(0, 0, Direction::Tx, Verdict::Forwarded, 60, &frame(1, 60));
        let got = read_ring(&path).expect("read");
        assert_eq!(got.packets.iter().map(|p| p.seq).collect::<Vec<_>>(), [1]);
    }
}

/// Without room for the re-made ring beside the old one (here: a directory in its way), the
/// ring is re-made in place: the start goes on, the old packets are dropped.
#[test]
fn a_ring_that_cannot_be_made_beside_is_made_in_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    write_v1_ring(&path, 8, 1..=5);
    fs::create_dir(dir.path().join("capture.ring.new")).expect("mkdir");
    let mut ring = CaptureRing::open(&path, &config(6)).expect("open");
    push_all(&mut ring, [1]);
    let got = read_ring(&path).expect("read");
    assert_eq!(got.geometry, config(6).geometry().expect("geometry"));
    assert_eq!(got.packets.iter().map(|p| p.seq).collect::<Vec<_>>(), [1]);
}

/// Minor page faults of the calling thread so far.
fn thread_minor_faults() -> i64 {
    // SAFETY: rusage is plain data; getrusage(2) fills it in.
    let mut ru = unsafe { std::mem::zeroed::<libc::rusage>() };
    // SAFETY: RUSAGE_THREAD of the calling thread into `ru`, which we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) }, 0);
    ru.ru_minflt
}

/// Push a lap and a half of packets into `ring`, just opened, checking its requests: they
/// tile the whole file once, in order, from the writer's page on; each comes before the writer
/// gets there, and keeps it about [`LEAD`] bytes behind what was asked for; then none come.
fn check_first_lap(ring: &mut CaptureRing) {
    let g = ring.geometry();
    let (file_len, slots) = (g.file_len(), g.slots);
    let base = ring.map.addr();
    let data = frame(1, 100);
    let start = ring.next_at - ring.next_at % 4096;
    let dist = |at: usize| (at + file_len - start) % file_len;
    let (mut next, mut asked) = (start, 0usize);
    let mut ranges = Vec::new();
    let mut written_before = 0; // by the packets before this one
    for i in 0..slots + slots / 2 {
        let at = ring.next_at;
        if let Some(p) = ring.push(i as u64, 0, Direction::Tx, Verdict::Forwarded, 100, &data) {
            let (addr, len) = p.range();
            assert_eq!(addr - base, next, "packet {i}: requests follow on");
            assert_eq!((addr - base) % 4096, 0, "page-aligned");
            next = (next + len) % file_len;
            asked += len;
            ranges.push(len);
        }
        if i < slots {
            let written = dist(at) + g.slot_size;
            assert!(
                asked == file_len || written <= asked,
                "packet {i} at {at} is past what was asked for ({asked} from {start})"
            );
            // Behind by at most a CHUNK, and the header page the writer skips at the wrap (a
            // request the file's end cut short is made whole at the next packet).
            let lead = (written_before + LEAD - CHUNK).min(file_len);
            assert!(
                i == 0 || asked + HEADER + g.slot_size >= lead,
                "packet {i} at {at}: only {asked} asked for from {start}"
            );
            written_before = written;
        }
    }
    assert_eq!(asked, file_len, "the file, once: {ranges:?}");
    assert_eq!(next, start, "back where it began");
}

/// A fresh ring's requests, from its first slot.
#[test]
fn the_first_lap_is_asked_for_ahead_of_the_writer_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 6.7 MiB of 112-byte slots: LEAD and a few CHUNKs, and a short end.
    let mut ring = CaptureRing::open(&dir.path().join(RING_FILE), &config(60_000)).expect("open");
    assert_eq!(ring.next_at, HEADER);
    check_first_lap(&mut ring);
}

/// A ring reopened with its writer less than [`LEAD`] from the file's end: the lead goes on
/// from the file's start.
#[test]
fn a_reopened_ring_near_its_end_keeps_the_lead_across_the_wrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(RING_FILE);
    let slots = 60_000u64;
    let mut ring = CaptureRing::open(&path, &config(slots)).expect("open");
    let near_end = slots as usize - LEAD / 2 / ring.geometry().slot_size;
    push_all(&mut ring, 1..=near_end as u64);
    drop(ring);
    let mut ring = CaptureRing::open(&path, &config(slots)).expect("reopen");
    assert!(
        ring.geometry().file_len() - ring.next_at < LEAD,
        "{}",
        ring.next_at
    );
    check_first_lap(&mut ring);
}

/// A range run (on any thread) is faulted in: the writer's stores there take no page fault,
/// where a ring whose requests are ignored takes one per page.
#[test]
fn a_populated_range_takes_the_writers_page_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = frame(1, 100);
    let slots = 60_000u64;
    let in_lead = (LEAD - 8192) / config(1).geometry().expect("geometry").slot_size;
    let faults = |populate: bool, name: &str| {
        let mut ring = CaptureRing::open(&dir.path().join(name), &config(slots)).expect("open");
        let first = ring.push(0, 0, Direction::Tx, Verdict::Forwarded, 100, &data);
        if populate {
            let first = first.expect("a request at the first packet");
            std::thread::spawn(move || first.run())
                .join()
                .expect("populate");
        }
        let before = thread_minor_faults();
        for i in 1..in_lead {
            let _ = ring.push(i as u64, 0, Direction::Tx, Verdict::Forwarded, 100, &data);
        }
        thread_minor_faults() - before
    };
    let pages = (LEAD / 4096) as i64;
    let unpopulated = faults(false, "a.ring");
    let populated = faults(true, "b.ring");
    assert!(
        unpopulated >= pages / 2,
        "without populating, {unpopulated} faults over {pages} pages"
    );
    assert!(
        populated <= pages / 32,
        "populated, still {populated} faults over {pages} pages"
    );
}
