//! Record framing: `magic | payload length | CRC32 of payload | payload`, all little-endian.
//!
//! The magic word lets a reader resynchronise after a corrupted record; the CRC catches torn
//! and flipped bytes. The payload is a fixed 68-byte part, then the addresses (0, 2×4 or
//! 2×16 bytes), then the slice and sliver names (at most 255 bytes each). Fixed part: version,
//! IP version, NIC, direction, verdict, protocol, TCP flags, slice and sliver name lengths,
//! VLAN tags (u8 each); EtherType, source and destination port (u16); slice id (u32); sequence
//! number, first and last packet (ns), packets, bytes, IP bytes (u64). Version 1 payloads
//! (60 bytes fixed, no IP bytes) are still read.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use packet::{Direction, Verdict};

use super::error::{AuditError, Result};
use super::record::FlowRecord;

/// Starts every record: "SVAR".
pub const MAGIC: [u8; 4] = *b"SVAR";
/// Magic + length + CRC.
pub const FRAME_HEADER: usize = 12;
/// Payload format version written.
const VERSION: u8 = 2;
/// Bytes before the addresses.
const FIXED: usize = 68;
/// Version 1 (before the IP byte count): bytes before the addresses.
const FIXED_V1: usize = 60;
/// No valid payload is longer.
pub const MAX_PAYLOAD: usize = FIXED + 32 + 2 * 255;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside the frame (a torn tail, if at the end of a file).
    Truncated,
    /// Bad magic, length, CRC or payload.
    Corrupt,
}

/// Append `rec` as one frame to `out`.
pub fn encode(rec: &FlowRecord, out: &mut Vec<u8>) -> Result<()> {
    encode_with_seq(rec, rec.seq, out)
}

/// Append `rec` as one frame to `out`, with sequence number `seq` instead of its own.
pub fn encode_with_seq(rec: &FlowRecord, seq: u64, out: &mut Vec<u8>) -> Result<()> {
    let slice = name_len("slice", &rec.slice)?;
    let sliver = name_len("sliver", &rec.sliver)?;
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 8]); // length and CRC, filled in below
    let ip_version = match (rec.src, rec.dst) {
        (Some(IpAddr::V4(_)), Some(IpAddr::V4(_))) => 4,
        (Some(IpAddr::V6(_)), Some(IpAddr::V6(_))) => 6,
        (None, None) => 0,
        _ => {
            return Err(AuditError::invalid(
                "src/dst",
                "both absent or of one IP version",
            ))
        }
    };
    out.extend_from_slice(&[
        VERSION,
        ip_version,
        rec.nic,
        rec.direction.code(),
        rec.verdict.code(),
        rec.protocol,
        rec.tcp_flags,
        slice,
        sliver,
        rec.vlan_tags,
    ]);
    for v in [rec.ethertype, rec.src_port, rec.dst_port] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&rec.slice_id.to_le_bytes());
    for v in [
        seq,
        rec.first_ns,
        rec.last_ns,
        rec.packets,
        rec.bytes,
        rec.ip_bytes,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for a in [rec.src, rec.dst].into_iter().flatten() {
        match a {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
    }
    out.extend_from_slice(rec.slice.as_bytes());
    out.extend_from_slice(rec.sliver.as_bytes());
    let payload = &out[start + FRAME_HEADER..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    out[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

fn name_len(field: &str, name: &str) -> Result<u8> {
    u8::try_from(name.len()).map_err(|_| AuditError::invalid(field, "longer than 255 bytes"))
}

/// Decode the frame at the start of `buf`; returns the record and the frame's length.
pub fn decode(buf: &[u8]) -> std::result::Result<(FlowRecord, usize), FrameError> {
    match decode_if(buf, &mut |_| true)? {
        (Some(rec), len) => Ok((rec, len)),
        (None, _) => Err(FrameError::Corrupt),
    }
}

/// What a filter may look at before a record is built (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peek {
    /// First packet.
    pub first_ns: u64,
    /// Last packet.
    pub last_ns: u64,
    /// Source address.
    pub src: Option<IpAddr>,
    /// Destination address.
    pub dst: Option<IpAddr>,
}

/// Like [`decode`], but the record is built only if `keep` accepts its [`Peek`] (else
/// `None`); the frame is validated (magic, length, CRC, layout) either way.
pub fn decode_if(
    buf: &[u8],
    keep: &mut dyn FnMut(&Peek) -> bool,
) -> std::result::Result<(Option<FlowRecord>, usize), FrameError> {
    if buf.len() < FRAME_HEADER {
        return Err(if MAGIC.starts_with(&buf[..buf.len().min(4)]) {
            FrameError::Truncated
        } else {
            FrameError::Corrupt
        });
    }
    if buf[..4] != MAGIC {
        return Err(FrameError::Corrupt);
    }
    let len = u32_at(buf, 4) as usize;
    if !(FIXED_V1..=MAX_PAYLOAD).contains(&len) {
        return Err(FrameError::Corrupt);
    }
    let Some(payload) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return Err(FrameError::Truncated);
    };
    if crc32fast::hash(payload) != u32_at(buf, 8) {
        return Err(FrameError::Corrupt);
    }
    let peek = peek_payload(payload).ok_or(FrameError::Corrupt)?;
    if !keep(&peek) {
        return Ok((None, FRAME_HEADER + len));
    }
    let rec = decode_payload(payload, &peek).ok_or(FrameError::Corrupt)?;
    Ok((Some(rec), FRAME_HEADER + len))
}

/// The offset of the next magic word at or after `from`, if any.
pub fn find_magic(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(MAGIC.len())
        .position(|w| w == MAGIC)
        .map(|p| p + from)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fixed part's and the address length (0, 4 or 16) of a payload whose layout is
/// consistent.
fn layout(p: &[u8]) -> Option<(usize, usize)> {
    let fixed = match p[0] {
        1 => FIXED_V1,
        VERSION => FIXED,
        _ => return None,
    };
    let addr_len = match p[1] {
        0 => 0,
        4 => 4,
        6 => 16,
        _ => return None,
    };
    let (slice_len, sliver_len) = (usize::from(p[7]), usize::from(p[8]));
    (p.len() == fixed + 2 * addr_len + slice_len + sliver_len).then_some((fixed, addr_len))
}

fn peek_payload(p: &[u8]) -> Option<Peek> {
    let (fixed, addr_len) = layout(p)?;
    let addr = |at: usize| -> Option<IpAddr> {
        match addr_len {
            4 => Some(IpAddr::V4(Ipv4Addr::from(u32::from_be_bytes(
                p[at..at + 4].try_into().ok()?,
            )))),
            16 => Some(IpAddr::V6(Ipv6Addr::from(u128::from_be_bytes(
                p[at..at + 16].try_into().ok()?,
            )))),
            _ => None,
        }
    };
    Some(Peek {
        first_ns: u64_at(p, 28),
        last_ns: u64_at(p, 36),
        src: addr(fixed),
        dst: addr(fixed + addr_len),
    })
}

fn decode_payload(p: &[u8], peek: &Peek) -> Option<FlowRecord> {
    let (fixed, addr_len) = layout(p)?;
    let slice_len = usize::from(p[7]);
    let names = fixed + 2 * addr_len;
    let (packets, bytes) = (u64_at(p, 44), u64_at(p, 52));
    let ip_bytes = if fixed == FIXED {
        u64_at(p, 60)
    } else if peek.src.is_some() {
        // Version 1 kept no IP byte count: estimate it from the frames.
        bytes.saturating_sub(packets.saturating_mul(14 + 4 * u64::from(p[9])))
    } else {
        0
    };
    Some(FlowRecord {
        seq: u64_at(p, 20),
        slice: String::from_utf8(p[names..names + slice_len].to_vec()).ok()?,
        slice_id: u32_at(p, 16),
        sliver: String::from_utf8(p[names + slice_len..].to_vec()).ok()?,
        nic: p[2],
        direction: Direction::from_code(p[3])?,
        // Byte 9 was reserved (0) before tags were recorded: old records read as untagged.
        vlan_tags: p[9],
        ethertype: u16_at(p, 10),
        src: peek.src,
        dst: peek.dst,
        protocol: p[5],
        src_port: u16_at(p, 12),
        dst_port: u16_at(p, 14),
        first_ns: peek.first_ns,
        last_ns: peek.last_ns,
        packets,
        bytes,
        ip_bytes,
        tcp_flags: p[6],
        verdict: Verdict::from_code(p[4])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    #[test]
    fn every_kind_of_record_round_trips() {
        for seq in 0..200 {
            let rec = synth::flow(seq, "sliver-a", 1_800_000_000_000_000_000 + seq);
            let mut buf = Vec::new();
            encode(&rec, &mut buf).expect("encode");
            let (back, len) = decode(&buf).expect("decode");
            assert_eq!(back, rec);
            assert_eq!(len, buf.len());
        }
    }

    #[test]
    fn version_1_records_still_read_with_an_estimated_ip_byte_count() {
        for seq in [1, 11, 13] {
            let rec = synth::flow(seq, "sliver-a", 1_800_000_000_000_000_000);
            let mut v2 = Vec::new();
            encode(&rec, &mut v2).expect("encode");
            // The same record as version 1 wrote it: no IP byte count after the byte count.
            let mut payload = v2[FRAME_HEADER..].to_vec();
            payload.drain(60..68);
            payload[0] = 1;
            let mut v1 = MAGIC.to_vec();
            v1.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            v1.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            v1.extend_from_slice(&payload);
            let (back, len) = decode(&v1).expect("decode v1");
            assert_eq!(len, v1.len());
            // synth's frames carry no padding, so the estimate is exact.
            assert_eq!(back, rec, "seq {seq}");
        }
    }

    #[test]
    fn torn_and_flipped_frames_are_told_apart() {
        let mut buf = Vec::new();
        encode(&synth::flow(5, "s", 1_000), &mut buf).expect("encode");
        for cut in 1..buf.len() {
            assert_eq!(
                decode(&buf[..cut]).err(),
                Some(FrameError::Truncated),
                "cut {cut}"
            );
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flipped byte {i} went unnoticed");
        }
    }

    #[test]
    fn a_filter_sees_times_and_addresses_before_the_record_is_built() {
        let rec = synth::flow(3, "s", 5_000_000_000);
        let mut buf = Vec::new();
        encode(&rec, &mut buf).expect("encode");
        let mut seen = None;
        let (got, len) = decode_if(&buf, &mut |p| {
            seen = Some(*p);
            false
        })
        .expect("valid frame");
        assert_eq!((got, len), (None, buf.len()));
        let want = Peek {
            first_ns: rec.first_ns,
            last_ns: rec.last_ns,
            src: rec.src,
            dst: rec.dst,
        };
        assert_eq!(seen, Some(want));
        let mut bad = buf.clone();
        bad[30] ^= 1;
        assert_eq!(decode_if(&bad, &mut |_| false), Err(FrameError::Corrupt));
    }

    #[test]
    fn resync_finds_the_next_record() {
        let mut buf = vec![0xaa; 7];
        encode(&synth::flow(9, "s", 1_000), &mut buf).expect("encode");
        assert_eq!(find_magic(&buf, 0), Some(7));
        assert_eq!(find_magic(&buf, 8), None);
        assert_eq!(decode(&buf[7..]).expect("decode").0.seq, 9);
    }

    #[test]
    fn long_names_and_mixed_families_are_refused() {
        let mut rec = synth::flow(1, "s", 1_000);
        rec.slice = "x".repeat(256);
        let err = encode(&rec, &mut Vec::new()).expect_err("long name");
        assert_eq!(err.field(), Some("slice"));
        let mut rec = synth::flow(1, "s", 1_000);
        rec.dst = None;
        assert!(encode(&rec, &mut Vec::new()).is_err());
    }
}
