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
pub(crate) const TCP: u8 = 6;
pub(crate) const UDP: u8 = 17;
/// IPv6 next-header values (IANA "Assigned Internet Protocol Numbers").
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const ICMPV6: u8 = 58;
const DEST_OPTS: u8 = 60;
/// ICMPv6 Neighbor Discovery types (RFC 4861 section 4).
pub const ND_ROUTER_SOLICIT: u8 = 133;
/// Router Advertisement.
pub const ND_ROUTER_ADVERT: u8 = 134;
/// Neighbor Solicitation.
pub const ND_NEIGHBOR_SOLICIT: u8 = 135;
/// Neighbor Advertisement.
pub const ND_NEIGHBOR_ADVERT: u8 = 136;
/// Redirect.
pub const ND_REDIRECT: u8 = 137;

/// The IP part of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeaders {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The IP packet's bytes (IPv4 total length; IPv6 40 + payload length), without the
    /// Ethernet header and any padding after the packet.
    pub len: u32,
    /// Protocol (IPv6: the upper-layer header after the extension headers, or the last
    /// next-header read when the chain runs past the head or into a later fragment).
    pub protocol: u8,
    /// TCP/UDP source port (0 otherwise, or if cut off).
    pub src_port: u16,
    /// TCP/UDP destination port.
    pub dst_port: u16,
    /// TCP flags (0 otherwise).
    pub tcp_flags: u8,
    /// Offset in the frame of its TCP or UDP header (0 when [`IpHeaders::headers_len`] is 0).
    pub l4_offset: u16,
    /// Bytes from the frame's first byte through the end of its TCP header (data offset,
    /// RFC 9293 section 3.1) or UDP header (8 bytes, RFC 768): the headers every segment of a
    /// GSO frame repeats. 0 when the packet is neither, is a later fragment, or the field is
    /// cut off.
    pub headers_len: u16,
    /// ICMPv6: the message type, and the link-layer addresses of its Neighbor Discovery
    /// options (source/target link-layer address, RFC 4861 section 4.6.1; up to two).
    pub icmpv6: Option<Icmpv6>,
}

/// What the parser read of an ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv6 {
    /// Message type.
    pub kind: u8,
    /// Link-layer addresses in its Neighbor Discovery options.
    pub ll_addrs: [Option<[u8; 6]>; 2],
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
    /// An ARP packet that is cut off or not Ethernet/IPv4 ARP (RFC 826: htype 1, ptype
    /// 0x0800, hlen 6, plen 4).
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

/// [`IpHeaders::l4_offset`]: `at` when the TCP/UDP header was read (`headers_len` > 0).
fn l4_offset(headers_len: u16, at: usize) -> u16 {
    if headers_len == 0 {
        0
    } else {
        u16::try_from(at).unwrap_or(0)
    }
}

/// [`IpHeaders::headers_len`] for an upper-layer header `l4` of `protocol` that starts
/// `offset` bytes into the frame.
fn headers_len(l4: &[u8], protocol: u8, offset: usize) -> u16 {
    let len = match protocol {
        // Data offset in 32-bit words, at least 5 (RFC 9293 section 3.1).
        TCP => match l4.get(12) {
            Some(&b) if b >> 4 >= 5 => usize::from(b >> 4) * 4,
            _ => return 0,
        },
        UDP if l4.len() >= 8 => 8,
        _ => return 0,
    };
    u16::try_from(offset + len).unwrap_or(0)
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
    let (src_port, dst_port, tcp_flags, headers_len) = match p.get(ihl..) {
        Some(l4) if first_fragment => {
            let (s, d, f) = ports(l4, protocol);
            (s, d, f, headers_len(l4, protocol, offset + ihl))
        }
        _ => (0, 0, 0, 0),
    };
    let l4_offset = l4_offset(headers_len, offset + ihl);
    Ok(IpHeaders {
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        len: u32::from(be16(p, 2)),
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        l4_offset,
        headers_len,
        icmpv6: None,
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
    // Follow the extension headers (RFC 8200 section 4) as far as the head goes.
    let mut protocol = p[6];
    let mut at = 40;
    let mut upper = None;
    while let Some(h) = p.get(at..at + 8) {
        match protocol {
            HOP_BY_HOP | ROUTING | DEST_OPTS => {
                protocol = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            // A later fragment has no upper-layer header; the first goes on to it.
            FRAGMENT if be16(h, 2) & 0xfff8 != 0 => break,
            FRAGMENT => {
                protocol = h[0];
                at += 8;
            }
            _ => {
                upper = p.get(at..);
                break;
            }
        }
    }
    let l4 = upper.unwrap_or_default();
    let (src_port, dst_port, tcp_flags) = ports(l4, protocol);
    let headers_len = if upper.is_some() {
        headers_len(l4, protocol, offset + at)
    } else {
        0
    };
    let l4_offset = l4_offset(headers_len, offset + at);
    let icmpv6 = (protocol == ICMPV6 && upper.is_some())
        .then(|| icmpv6(l4))
        .flatten();
    Ok(IpHeaders {
        src: addr(8),
        dst: addr(24),
        len: 40 + u32::from(be16(p, 4)),
        protocol,
        src_port,
        dst_port,
        tcp_flags,
        l4_offset,
        headers_len,
        icmpv6,
    })
}

/// An ICMPv6 message's type and, for Neighbor Discovery, the link-layer address options
/// that fit in `m` (RFC 4861 sections 4.1-4.5: the options start after 8 bytes (RS), 16 (RA),
/// 24 (NS, NA) or 40 (Redirect)). `None` when even the type is cut off.
fn icmpv6(m: &[u8]) -> Option<Icmpv6> {
    let kind = *m.first()?;
    let mut ll_addrs = [None; 2];
    let options_at = match kind {
        ND_ROUTER_SOLICIT => 8,
        ND_ROUTER_ADVERT => 16,
        ND_NEIGHBOR_SOLICIT | ND_NEIGHBOR_ADVERT => 24,
        ND_REDIRECT => 40,
        _ => return Some(Icmpv6 { kind, ll_addrs }),
    };
    let mut at = options_at;
    let mut found = 0;
    // Options: type, length in units of 8 bytes (0 is invalid), data.
    while let (Some(&opt), Some(&len)) = (m.get(at), m.get(at + 1)) {
        if len == 0 {
            break;
        }
        if (opt == 1 || opt == 2) && found < ll_addrs.len() {
            if let Some(mac) = m.get(at + 2..at + 8) {
                let mut a = [0u8; 6];
                a.copy_from_slice(mac);
                ll_addrs[found] = Some(a);
                found += 1;
            }
        }
        at += usize::from(len) * 8;
    }
    Some(Icmpv6 { kind, ll_addrs })
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
            // Ethernet (1) hardware, IPv4 (0x0800) protocol, address lengths 6 and 4.
            if payload.len() < 28 || payload[..6] != [0, 1, 0x08, 0x00, 6, 4] {
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

    /// An Ethernet + IPv4 + TCP (data offset 8: 32 header bytes) frame of `len` bytes, from
    /// 10.0.0.2 to 10.0.0.1, ACK (test helper shared with the offload modules' tests).
    pub(crate) fn tcp4_frame(len: usize) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        let ip_len = u16::try_from(len - 14).expect("IPv4 length");
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&ip_len.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
        let mut tcp = [0u8; 32];
        tcp[12] = 8 << 4;
        tcp[13] = 0x10;
        f.extend_from_slice(&tcp);
        f.resize(len, 0);
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

    /// An ARP request's fixed part: htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4, op 1.
    pub(crate) const ARP_REQUEST: [u8; 8] = [0, 1, 0x08, 0x00, 6, 4, 0, 1];

    /// An Ethernet + IPv6 frame from `src_mac` and `src` whose payload is `next` then
    /// `payload` (extension headers and the upper-layer message).
    pub(crate) fn ipv6_frame(src_mac: [u8; 6], src: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x33, 0x33, 0, 0, 0, 1];
        f.extend_from_slice(&src_mac);
        f.extend_from_slice(&ETH_IPV6.to_be_bytes());
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&u16::try_from(payload.len()).expect("len").to_be_bytes());
        ip[6] = next;
        ip[7] = 255;
        ip[8..24].copy_from_slice(&src.octets());
        ip[24..40].copy_from_slice(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets());
        f.extend_from_slice(&ip);
        f.extend_from_slice(payload);
        f
    }

    /// An ICMPv6 Neighbor Solicitation with a source link-layer address option of `ll`.
    pub(crate) fn neighbor_solicit(ll: [u8; 6]) -> Vec<u8> {
        let mut m = vec![ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        m.extend_from_slice(&Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets());
        m.extend_from_slice(&[1, 1]);
        m.extend_from_slice(&ll);
        m
    }

    #[test]
    fn ipv6_extension_headers_and_neighbor_discovery() {
        let ll = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);
        let mac = [2, 0, 0, 0, 0, 9];
        let f = ipv6_frame(mac, ll, ICMPV6, &neighbor_solicit([2, 0, 0, 0, 0, 0x66]));
        let ip = parse(&f, f.len()).expect("ns").ip.expect("ip");
        assert_eq!((ip.protocol, ip.len), (ICMPV6, 40 + 32));
        let icmp = ip.icmpv6.expect("icmpv6");
        assert_eq!(icmp.kind, ND_NEIGHBOR_SOLICIT);
        assert_eq!(icmp.ll_addrs, [Some([2, 0, 0, 0, 0, 0x66]), None]);
        // A hop-by-hop header (as MLD reports carry) in front of ICMPv6 type 143.
        let mut hbh = vec![ICMPV6, 0, 5, 2, 0, 0, 1, 0];
        hbh.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
        let f = ipv6_frame(mac, ll, HOP_BY_HOP, &hbh);
        let ip = parse(&f, f.len()).expect("mld").ip.expect("ip");
        assert_eq!(
            (ip.protocol, ip.icmpv6.map(|i| i.kind)),
            (ICMPV6, Some(143))
        );
        // UDP after a first fragment has ports; a later fragment has no upper layer.
        let mut frag = vec![UDP, 0, 0, 1, 0, 0, 0, 1];
        frag.extend_from_slice(&[0x02, 0x22, 0x02, 0x23, 0, 8, 0, 0]);
        let f = ipv6_frame(mac, ll, FRAGMENT, &frag);
        let ip = parse(&f, f.len()).expect("first fragment").ip.expect("ip");
        assert_eq!((ip.protocol, ip.src_port, ip.dst_port), (UDP, 546, 547));
        frag[2..4].copy_from_slice(&0x0100u16.to_be_bytes()); // offset 32
        let f = ipv6_frame(mac, ll, FRAGMENT, &frag);
        let ip = parse(&f, f.len()).expect("later fragment").ip.expect("ip");
        assert_eq!((ip.protocol, ip.src_port, ip.icmpv6), (FRAGMENT, 0, None));
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
        arp[..8].copy_from_slice(&ARP_REQUEST);
        arp[8..14].copy_from_slice(&[2, 0, 0, 0, 0, 7]);
        arp[14..18].copy_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&arp);
        let h = parse(&f, f.len()).expect("arp");
        assert_eq!(
            h.arp_sender,
            Some(([2, 0, 0, 0, 0, 7], Ipv4Addr::new(10, 0, 0, 2)))
        );
        // Not Ethernet/IPv4 ARP (RFC 826's htype, ptype, hlen, plen): refused.
        for (at, bad) in [(1, 6u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut g = f.clone();
            g[14 + at] = bad;
            assert_eq!(parse(&g, g.len()), Err(HeaderError::BadArp), "byte {at}");
        }
        let mut lldp = f[..12].to_vec();
        lldp.extend_from_slice(&0x88ccu16.to_be_bytes());
        let h = parse(&lldp, lldp.len()).expect("lldp");
        assert_eq!((h.ethertype, h.ip), (0x88cc, None));
    }
}
