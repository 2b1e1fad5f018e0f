//! Synthetic flow records whose every field follows from a sequence number, so that tests,
//! the crash-test helper and the benchmark can write records and check them after reading.

use std::net::IpAddr;

use packet::{Direction, Verdict};

use super::record::FlowRecord;

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
        vlan_tags: u8::from(seq.is_multiple_of(11)),
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
        // The frames of `frame` carry no padding: the IP packets are the rest of them.
        ip_bytes: if non_ip {
            0
        } else {
            (seq % 1000 + 1) * (100 - 14 - 4 * u64::from(seq.is_multiple_of(11)))
        },
        tcp_flags: if non_ip { 0 } else { (seq % 64) as u8 },
        verdict: Verdict::ALL[(seq % 6) as usize],
    }
}

/// An Ethernet frame of the flow `rec` (IPv4 or IPv6 with a TCP header, or an ARP-typed
/// frame for non-IP flows), `payload` bytes of zeros after the headers.
pub fn frame(rec: &FlowRecord, payload: usize) -> Vec<u8> {
    let mut f = vec![0x52, 0x54, 0, 0, 0, 2, 0x52, 0x54, 0, 0, 0, 1];
    f.extend_from_slice(&rec.ethertype.to_be_bytes());
    let tcp = |f: &mut Vec<u8>| {
        f.extend_from_slice(&rec.src_port.to_be_bytes());
        f.extend_from_slice(&rec.dst_port.to_be_bytes());
        f.extend_from_slice(&[
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0x50,
            rec.tcp_flags & 0x3f,
            0xff,
            0xff,
        ]);
        f.extend_from_slice(&[0, 0, 0, 0]); // checksum (not computed), urgent pointer
    };
    match (rec.src, rec.dst) {
        (Some(IpAddr::V4(s)), Some(IpAddr::V4(d))) => {
            let total = (20 + 20 + payload) as u16;
            f.extend_from_slice(&[0x45, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            tcp(&mut f);
        }
        (Some(IpAddr::V6(s)), Some(IpAddr::V6(d))) => {
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&((20 + payload) as u16).to_be_bytes());
            f.extend_from_slice(&[6, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            tcp(&mut f);
        }
        _ => f.extend_from_slice(&[0; 28]),
    }
    f.resize(f.len() + payload, 0);
    f
}
