//! What the stages after the frame checks read from a frame's first bytes: MACs, the VLAN tags
//! (IEEE 802.1Q C-tags and 802.1ad S-tags, stacked: up to [`MAX_TAGS`]), the EtherType inside
//! them, and for IPv4/IPv6 the addresses, protocol, ports and TCP flags; for ARP the sender.
//! Parsed once per frame, when anti-spoofing or the audit is on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How much of each frame the device copies and the stages read (enough for Ethernet + VLAN +
/// IPv6 + TCP headers).
pub const HEADER_BYTES: usize = 128;

/// EtherType of IPv4.
pub const ETH_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_IPV6: u16 = 0x86dd;
/// EtherType of ARP.
pub const ETH_ARP: u16 = 0x0806;
/// Tag protocol identifiers (TPIDs): IEEE 802.1Q C-tag, IEEE 802.1ad S-tag, and the
/// pre-standard QinQ values 0x9100-0x9300 that some switches use.
pub const VLAN_TPIDS: [u16; 5] = [0x8100, 0x88a8, 0x9100, 0x9200, 0x9300];
/// Most tags read through; a frame with more stays classified by its last TPID.
pub const MAX_TAGS: u8 = 4;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// The IP part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeaders {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol (IPv6: the first next-header).
    pub protocol: u8,
    /// TCP/UDP source port (0 otherwise, or if cut off).
    pub src_port: u16,
    /// TCP/UDP destination port.
    pub dst_port: u16,
    /// TCP flags (0 otherwise).
    pub tcp_flags: u8,
}

/// A parsed frame head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeaders {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// VLAN tags in front of the EtherType (0 for an untagged frame).
    pub vlan_tags: u8,
    /// EtherType (inside the VLAN tags, if any).
    pub ethertype: u16,
    /// For IPv4/IPv6.
    pub ip: Option<IpHeaders>,
    /// For ARP: the sender's hardware and protocol address.
    pub arp_sender: Option<([u8; 6], Ipv4Addr)>,
}

/// Why a frame head could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than an Ethernet header.
    #[error("frame shorter than an Ethernet header")]
    ShortEthernet,
    /// An IP header that is cut off or inconsistent.
    #[error("bad IP header")]
    BadIp,
    /// An ARP packet that is cut off.
    #[error("bad ARP packet")]
    BadArp,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn ports(l4: &[u8], protocol: u8) -> (u16, u16, u8) {
    match protocol {
        TCP if l4.len() >= 14 => (be16(l4, 0), be16(l4, 2), l4[13]),
        UDP | TCP if l4.len() >= 4 => (be16(l4, 0), be16(l4, 2), 0),
        _ => (0, 0, 0),
    }
}

fn ipv4(p: &[u8], frame_len: usize, offset: usize) -> Result<IpHeaders, HeaderError> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Err(HeaderError::BadIp);
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(be16(p, 2));
    if ihl < 20 || total < ihl || offset + total > frame_len {
        return Err(HeaderError::BadIp);
    }
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let protocol = p[9];
    // Only the first fragment carries ports.
    let first_fragment = be16(p, 6) & 0x1fff == 0;
    let (src_port, dst_port, tcp_flags) = match p.get(ihl..) {
        Some(l4) if first_fragment => ports(l4, protocol),
        _ => (0, 0, 0),
    };
    Ok(IpHeaders {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        protocol,
        src_port,
        dst_port,
        tcp_flags,
    })
}

fn ipv6(p: &[u8], frame_len: usize, offset: usize) -> Result<IpHeaders, HeaderError> {
    if p.len() < 40 || p[0] >> 4 != 6 || offset + 40 + usize::from(be16(p, 4)) > frame_len {
        return Err(HeaderError::BadIp);
    }
    let addr = |at: usize| {
        let mut a = [0u8; 16];
        a.copy_from_slice(&p[at..at + 16]);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    let protocol = p[6];
    let (src_port, dst_port, tcp_flags) = ports(&p[40..], protocol);
    Ok(IpHeaders {
        src: addr(8),
        dst: addr(24),
        protocol,
        src_port,
        dst_port,
        tcp_flags,
    })
}

/// Parse `head` (the frame's first bytes) of a frame of `frame_len` bytes.
pub fn parse(head: &[u8], frame_len: usize) -> Result<FrameHeaders, HeaderError> {
    if head.len() < 14 {
        return Err(HeaderError::ShortEthernet);
    }
    let mut dst_mac = [0u8; 6];
    let mut src_mac = [0u8; 6];
    dst_mac.copy_from_slice(&head[..6]);
    src_mac.copy_from_slice(&head[6..12]);
    let mut ethertype = be16(head, 12);
    let mut l3 = 14;
    let mut vlan_tags = 0;
    while VLAN_TPIDS.contains(&ethertype) && vlan_tags < MAX_TAGS && head.len() >= l3 + 4 {
        ethertype = be16(head, l3 + 2);
        l3 += 4;
        vlan_tags += 1;
    }
    let payload = &head[l3.min(head.len())..];
    let mut out = FrameHeaders {
        dst_mac,
        src_mac,
        vlan_tags,
        ethertype,
        ip: None,
        arp_sender: None,
    };
    match ethertype {
        ETH_IPV4 => out.ip = Some(ipv4(payload, frame_len, l3)?),
        ETH_IPV6 => out.ip = Some(ipv6(payload, frame_len, l3)?),
        ETH_ARP => {
            if payload.len() < 28 {
                return Err(HeaderError::BadArp);
            }
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&payload[8..14]);
            let ip = Ipv4Addr::new(payload[14], payload[15], payload[16], payload[17]);
            out.arp_sender = Some((mac, ip));
        }
        _ => {}
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An Ethernet + IPv4 + TCP/UDP frame head (test helper shared with the stage's tests).
    pub(crate) fn ipv4_frame(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETH_IPV4.to_be_bytes());
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&60u16.to_be_bytes());
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        f.extend_from_slice(&ip);
        let mut l4 = [0u8; 40];
        l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&80u16.to_be_bytes());
        l4[13] = 0x02; // SYN
        f.extend_from_slice(&l4);
        f
    }

    #[test]
    fn ipv4_tcp_five_tuple_and_flags() {
        let f = ipv4_frame([2, 0, 0, 0, 0, 9], [10, 0, 0, 2], [10, 0, 0, 1], TCP);
        let h = parse(&f, f.len()).expect("parse");
        let ip = h.ip.expect("ip");
        assert_eq!(ip.src, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!((ip.protocol, ip.src_port, ip.dst_port), (TCP, 40000, 80));
        assert_eq!(ip.tcp_flags, 0x02);
        assert_eq!(h.src_mac, [2, 0, 0, 0, 0, 9]);
    }

    #[test]
    fn cut_off_or_lying_ip_headers_are_errors() {
        let mut f = ipv4_frame([2; 6], [1; 4], [2; 4], UDP);
        assert_eq!(parse(&f[..20], 20), Err(HeaderError::BadIp));
        f[14] = 0x42; // IHL 2
        assert_eq!(parse(&f, f.len()), Err(HeaderError::BadIp));
        let mut g = ipv4_frame([2; 6], [1; 4], [2; 4], UDP);
        g[16..18].copy_from_slice(&9000u16.to_be_bytes()); // total length past the frame
        assert_eq!(parse(&g, g.len()), Err(HeaderError::BadIp));
        assert_eq!(parse(&[0u8; 10], 10), Err(HeaderError::ShortEthernet));
    }

    /// `frame` with VLAN tags of TPIDs `tpids` (outermost first) in front of its EtherType.
    pub(crate) fn tagged(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
        let mut f = frame[..12].to_vec();
        for (i, tpid) in tpids.iter().enumerate() {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&u16::try_from(100 + i).expect("vid").to_be_bytes());
        }
        f.extend_from_slice(&frame[12..]);
        f
    }

    #[test]
    fn stacked_tags_are_read_through_to_the_ip_header() {
        let f = ipv4_frame([2, 0, 0, 0, 0, 9], [10, 0, 0, 66], [10, 0, 0, 1], UDP);
        for tpids in [
            vec![0x8100],
            vec![0x88a8],
            vec![0x88a8, 0x8100],
            vec![0x8100, 0x8100],
            vec![0x9100, 0x8100],
        ] {
            let t = tagged(&f, &tpids);
            let h = parse(&t, t.len()).expect("tagged");
            assert_eq!(usize::from(h.vlan_tags), tpids.len(), "{tpids:x?}");
            assert_eq!(h.ethertype, ETH_IPV4);
            let ip = h.ip.expect("the inner IP header");
            assert_eq!(
                ip.src,
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 66)),
                "{tpids:x?}"
            );
        }
        let deep = tagged(&f, &[0x8100; 5]);
        let h = parse(&deep, deep.len()).expect("deep");
        assert_eq!((h.vlan_tags, h.ethertype, h.ip), (MAX_TAGS, 0x8100, None));
        // A tag cut off by the end of the frame leaves the TPID as the EtherType.
        let cut = &tagged(&f, &[0x8100])[..15];
        let h = parse(cut, cut.len()).expect("cut");
        assert_eq!((h.vlan_tags, h.ethertype), (0, 0x8100));
    }

    #[test]
    fn arp_sender_and_other_ethertypes() {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 7]);
        f.extend_from_slice(&ETH_ARP.to_be_bytes());
        let mut arp = [0u8; 28];
        arp[8..14].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        arp[14..18].copy_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&arp);
        let h = parse(&f, f.len()).expect("arp");
        assert_eq!(
            h.arp_sender,
            Some(([2, 0, 0, 0, 0, 7], Ipv4Addr::new(10, 0, 0, 2)))
        );
        let mut lldp = f[..12].to_vec();
        lldp.extend_from_slice(&0x88ccu16.to_be_bytes());
        let h = parse(&lldp, lldp.len()).expect("lldp");
        assert_eq!((h.ethertype, h.ip), (0x88cc, None));
    }
}
