//! Synthetic flow records whose every field follows from a sequence number, so that tests,
//! the crash-test helper and the benchmark can write records and check them after reading.

use std::net::IpAddr;

use super::record::{Direction, FlowRecord, Verdict};

/// The record number `seq` of sliver `sliver`, its last packet at `last_ns`.
///
/// Every fifth is IPv6, every seventeenth a non-IP (ARP) flow; the rest IPv4 TCP from
/// `10.0.x.y` to `192.0.2.(seq % 7)`, port 443.
pub fn flow(seq: u64, sliver: &str, last_ns: u64) -> FlowRecord {
    let non_ip = seq.is_multiple_of(17);
    let v6 = seq.is_multiple_of(5);
    let (ethertype, src, dst): (u16, Option<IpAddr>, Option<IpAddr>) = if non_ip {
        (0x0806, None, None)
    } else if v6 {
        (
            0x86dd,
            Some(IpAddr::from([
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                0,
                (seq & 0xffff) as u16,
            ])),
            Some(IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 1])),
        )
    } else {
        (
            0x0800,
            Some(IpAddr::from([10, 0, (seq >> 8) as u8, seq as u8])),
            Some(IpAddr::from([192, 0, 2, (seq % 7) as u8])),
        )
    };
    FlowRecord {
        seq,
        slice: format!("slice{}", seq % 3),
        slice_id: 100 + (seq % 3) as u32,
        sliver: sliver.to_string(),
        nic: (seq % 2) as u8,
        direction: if seq.is_multiple_of(2) {
            Direction::Tx
        } else {
            Direction::Rx
        },
        ethertype,
        src,
        dst,
        protocol: if non_ip { 0 } else { 6 },
        src_port: if non_ip {
            0
        } else {
            1024 + (seq % 60000) as u16
        },
        dst_port: if non_ip { 0 } else { 443 },
        first_ns: last_ns.saturating_sub(1_000_000 * (seq % 1000)),
        last_ns,
        packets: seq % 1000 + 1,
        bytes: (seq % 1000 + 1) * 100,
        tcp_flags: if non_ip { 0 } else { (seq % 64) as u8 },
        verdict: Verdict::ALL[(seq % 4) as usize],
    }
}
