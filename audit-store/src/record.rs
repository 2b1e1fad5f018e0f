//! One flow record as the packet path's audit stage emits it: who (slice, sliver, NIC), what
//! (5-tuple or EtherType), when (first/last packet), how much, and what the VMM did with it.

use std::net::IpAddr;

use packet::{Direction, Verdict};
use serde::{Deserialize, Serialize};

/// One flow (or one active-timeout slice of a long flow) of one sliver NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Sequence number in the sliver's log, assigned by [`super::writer::AuditLog::append`].
    pub seq: u64,
    /// Slice name.
    pub slice: String,
    /// Numeric slice id (IPFIX ingressVRFID/egressVRFID).
    pub slice_id: u32,
    /// Sliver name.
    pub sliver: String,
    /// Index of the sliver's NIC (0 = eth0).
    pub nic: u8,
    /// Seen from the guest.
    pub direction: Direction,
    /// VLAN tags in front of the EtherType (0: untagged).
    #[serde(default)]
    pub vlan_tags: u8,
    /// EtherType of the frames, inside their VLAN tags (0x0800 IPv4, 0x86dd IPv6, others for
    /// non-IP).
    pub ethertype: u16,
    /// Source address (None for non-IP frames).
    pub src: Option<IpAddr>,
    /// Destination address (None for non-IP frames).
    pub dst: Option<IpAddr>,
    /// IP protocol (6 TCP, 17 UDP, ...); 0 for non-IP.
    pub protocol: u8,
    /// Source port (0 if none).
    pub src_port: u16,
    /// Destination port (0 if none).
    pub dst_port: u16,
    /// First packet, ns since the Unix epoch.
    pub first_ns: u64,
    /// Last packet, ns since the Unix epoch.
    pub last_ns: u64,
    /// Packets.
    pub packets: u64,
    /// Bytes (whole frames).
    pub bytes: u64,
    /// IP bytes: the IP packets' own lengths (IPv4 total length, IPv6 40 + payload length),
    /// without Ethernet headers, VLAN tags and padding; 0 for non-IP flows. (Records written
    /// before it existed read as `bytes` less 14 + 4 per tag per packet.)
    #[serde(default)]
    pub ip_bytes: u64,
    /// OR of the TCP flags of every packet.
    pub tcp_flags: u8,
    /// What the VMM did.
    pub verdict: Verdict,
}

impl FlowRecord {
    /// Whether the flow was active at some time in `[from, to]` (ns, inclusive).
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.first_ns <= to && self.last_ns >= from
    }
}

#[cfg(test)]
mod tests {
    use crate::synth;

    #[test]
    fn overlap_is_inclusive() {
        let r = synth::flow(2, "s", 10_000_000_000);
        assert!(r.overlaps(r.last_ns, r.last_ns + 10));
        assert!(r.overlaps(0, r.first_ns));
        assert!(!r.overlaps(r.last_ns + 1, u64::MAX));
        assert!(!r.overlaps(0, r.first_ns - 1));
    }
}
