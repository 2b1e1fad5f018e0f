//! One slot of a capture ring: how a packet is written into it and read back, in the current
//! layout (version 2, a commit word at each end) and the one before it (version 1, a CRC32).
//!
//! Version 2 (little-endian): `seq u64 | ts_ns u64 | orig_len u32 | caplen u16 | nic u8 |
//! direction u8 | verdict u8 | 7 pad | data (snaplen rounded up to 8) | seq u64`. The two
//! `seq` words are the commit: [`write`] zeroes both, then writes the rest, then stores the
//! trailing `seq` and last the leading one, so a slot whose words differ (or are 0) was cut
//! short and is skipped. That holds for a writer killed at any instruction (its stores
//! reach the page cache in program order) and for a slot straddling two pages written back
//! at different times (each half is all old or all new relative to its own word). A reader
//! of a live ring cannot rely on the words alone (one copy's loads are not ordered):
//! [`super::read_ring`] reads twice and keeps only slots the same both times.
//!
//! Version 1: `CRC32 u32 | caplen u16 | nic u8 | direction u8 | verdict u8 | 3 pad |
//! orig_len u32 | seq u64 | ts_ns u64 | data`, the CRC (IEEE) over everything after itself up
//! to the end of the data. Only read, to carry an old ring's packets over.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use packet::{Direction, Verdict};

/// Bytes of a slot before its data, in both versions.
pub(super) const HEADER: usize = 32;
/// Bytes of a version 2 slot after its data (the trailing commit word).
pub(super) const TRAILER: usize = 8;

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Order of capture.
    pub seq: u64,
    /// When, ns since the Unix epoch.
    pub ts_ns: u64,
    /// NIC index.
    pub nic: u8,
    /// Direction seen from the guest.
    pub direction: Direction,
    /// What the VMM did with it.
    pub verdict: Verdict,
    /// Length on the wire.
    pub orig_len: u32,
    /// The first snaplen bytes.
    pub data: Vec<u8>,
}

/// What [`write`] puts in a slot besides the data.
#[derive(Debug, Clone, Copy)]
pub(super) struct SlotHeader {
    pub seq: u64,
    pub ts_ns: u64,
    pub nic: u8,
    pub direction: Direction,
    pub verdict: Verdict,
    pub orig_len: u32,
}

impl From<&CapturedPacket> for SlotHeader {
    fn from(p: &CapturedPacket) -> Self {
        SlotHeader {
            seq: p.seq,
            ts_ns: p.ts_ns,
            nic: p.nic,
            direction: p.direction,
            verdict: p.verdict,
            orig_len: p.orig_len,
        }
    }
}

/// The commit word at byte `at` of `slot`.
fn commit_word(slot: &mut [u8], at: usize) -> &AtomicU64 {
    let word = &mut slot[at..at + 8];
    let ptr = word.as_mut_ptr();
    assert!(
        ptr.cast::<u64>().is_aligned(),
        "a capture slot's commit word is 8-aligned"
    );
    // SAFETY: `ptr` points to 8 bytes borrowed mutably from `slot` for the returned
    // reference's lifetime, aligned for a u64 (asserted); no other reference to them exists
    // in this process meanwhile. Other processes read the file, never through Rust memory.
    unsafe { AtomicU64::from_ptr(ptr.cast()) }
}

/// Write a version 2 slot: `header` and `data` (which must fit before the trailer).
pub(super) fn write(slot: &mut [u8], header: &SlotHeader, data: &[u8]) {
    let end = slot.len() - TRAILER;
    commit_word(slot, 0).store(0, Ordering::Relaxed);
    commit_word(slot, end).store(0, Ordering::Relaxed);
    // The zeroed words before any other byte of the slot changes. The readers are other
    // processes reading the file, outside Rust's memory model: what holds is the hardware's
    // store order (x86 keeps it; the fence is a `dmb` on arm64) and the compiler's, which
    // the fence and the atomic stores keep.
    fence(Ordering::Release);
    slot[8..16].copy_from_slice(&header.ts_ns.to_le_bytes());
    slot[16..20].copy_from_slice(&header.orig_len.to_le_bytes());
    slot[20..22].copy_from_slice(&(data.len() as u16).to_le_bytes());
    slot[22] = header.nic;
    slot[23] = header.direction.code();
    slot[24] = header.verdict.code();
    slot[25..HEADER].fill(0);
    slot[HEADER..HEADER + data.len()].copy_from_slice(data);
    let seq = header.seq.to_le();
    commit_word(slot, end).store(seq, Ordering::Release);
    commit_word(slot, 0).store(seq, Ordering::Release);
}

fn le64(slot: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&slot[at..at + 8]);
    u64::from_le_bytes(b)
}

fn le32(slot: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([slot[at], slot[at + 1], slot[at + 2], slot[at + 3]])
}

fn le16(slot: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([slot[at], slot[at + 1]]))
}

/// The leading and trailing commit words of a version 2 slot (`None` if it is too short).
pub(super) fn commit_words(slot: &[u8]) -> Option<(u64, u64)> {
    let end = slot.len().checked_sub(TRAILER).filter(|&e| e >= 8)?;
    Some((le64(slot, 0), le64(slot, end)))
}

/// The packet in a version 2 slot, or `None` for a slot never written or cut short.
pub(super) fn read(slot: &[u8]) -> Option<CapturedPacket> {
    let end = slot.len().checked_sub(TRAILER)?;
    let seq = le64(slot, 0);
    let data = slot.get(HEADER..HEADER + le16(slot, 20))?;
    if seq == 0 || le64(slot, end) != seq || HEADER + data.len() > end {
        return None;
    }
    Some(CapturedPacket {
        seq,
        ts_ns: le64(slot, 8),
        nic: slot[22],
        direction: Direction::from_code(slot[23])?,
        verdict: Verdict::from_code(slot[24])?,
        orig_len: le32(slot, 16),
        data: data.to_vec(),
    })
}

/// The packet in a version 1 slot, or `None` for a slot never written or failing its CRC.
pub(super) fn read_v1(slot: &[u8]) -> Option<CapturedPacket> {
    let data = slot.get(HEADER..HEADER + le16(slot, 4))?;
    let seq = le64(slot, 16);
    if seq == 0 || crc32fast::hash(&slot[4..HEADER + data.len()]) != le32(slot, 0) {
        return None;
    }
    Some(CapturedPacket {
        seq,
        ts_ns: le64(slot, 24),
        nic: slot[6],
        direction: Direction::from_code(slot[7])?,
        verdict: Verdict::from_code(slot[8])?,
        orig_len: le32(slot, 12),
        data: data.to_vec(),
    })
}

/// Write a version 1 slot (for tests of carrying an old ring over).
#[cfg(test)]
pub(super) fn write_v1(slot: &mut [u8], header: &SlotHeader, data: &[u8]) {
    slot[4..6].copy_from_slice(&(data.len() as u16).to_le_bytes());
    slot[6] = header.nic;
    slot[7] = header.direction.code();
    slot[8] = header.verdict.code();
    slot[9..12].fill(0);
    slot[12..16].copy_from_slice(&header.orig_len.to_le_bytes());
    slot[16..24].copy_from_slice(&header.seq.to_le_bytes());
    slot[24..32].copy_from_slice(&header.ts_ns.to_le_bytes());
    slot[HEADER..HEADER + data.len()].copy_from_slice(data);
    let crc = crc32fast::hash(&slot[4..HEADER + data.len()]);
    slot[..4].copy_from_slice(&crc.to_le_bytes());
}
