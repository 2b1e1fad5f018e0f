//! GSO frames: one descriptor chain carrying a TCP or UDP packet longer than the link, which
//! the receiver cuts into segments of `gso_size` payload bytes, each repeating the headers
//! (virtio 1.2 section 5.1.6.2; Linux `include/linux/virtio_net.h`). The shaper, the audit
//! and the counters count what goes on the wire, segment by segment: [`WireSize`].
//!
//! A GSO frame must say what it is: TCPV4 an IPv4 TCP packet, TCPV6 an IPv6 TCP packet (RFC
//! 9293), UDP_L4 a UDP datagram of either (RFC 768); NEEDS_CSUM set (virtio 1.2 section
//! 5.1.6.2.1: "the driver MUST also set the VIRTIO_NET_HDR_F_NEEDS_CSUM bit"); a `gso_size`
//! of at least Linux's `TCP_MIN_MSS` (88); `hdr_len` within the frame; and every segment
//! fitting the link.
//! Its checksum request must name its own TCP or UDP checksum field
//! ([`check_csum_request`](super::checksum::check_csum_request)).

use virtio_bindings::virtio_net::{
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP_L4,
};

use super::checksum::NEEDS_CSUM;
use super::frame_checks::{ETH_HDR_LEN, VLAN_TAG_LEN};
use super::headers::{FrameHeaders, TCP, UDP};
use super::VNET_HDR_LEN;

/// The GSO fields of a virtio header whose gso_type is not NONE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gso {
    /// `gso_type` without the ECN bit (VIRTIO_NET_HDR_GSO_*).
    pub kind: u8,
    /// `gso_size`: payload bytes per segment.
    pub size: u16,
    /// `flags` has NEEDS_CSUM.
    pub needs_csum: bool,
    /// `hdr_len`: bytes of headers, a hint for the host.
    pub hdr_len: u16,
}

impl Gso {
    /// The GSO fields of `hdr` (a `virtio_net_hdr_v1`, 12 bytes little-endian), or `None`
    /// for GSO_NONE or a header cut short.
    pub fn of(hdr: &[u8]) -> Option<Self> {
        let hdr = hdr.get(..VNET_HDR_LEN)?;
        let kind = hdr[1] & !flag(VIRTIO_NET_HDR_GSO_ECN);
        (kind != flag(VIRTIO_NET_HDR_GSO_NONE)).then(|| Self {
            kind,
            size: u16::from_le_bytes([hdr[4], hdr[5]]),
            needs_csum: hdr[0] & NEEDS_CSUM != 0,
            hdr_len: u16::from_le_bytes([hdr[2], hdr[3]]),
        })
    }
}

/// Why a GSO frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    /// gso_size below [`MIN_GSO_SIZE`].
    #[error("GSO frame with gso_size {0} (at least 88)")]
    SmallSize(u16),
    /// hdr_len past the frame.
    #[error("GSO frame with hdr_len {0} past its end")]
    HdrLen(u16),
    /// No NEEDS_CSUM.
    #[error("GSO frame without NEEDS_CSUM")]
    NoChecksum,
    /// The headers are not what gso_type says (or could not be read).
    #[error("gso_type {kind} does not match the frame's headers")]
    WrongHeaders {
        /// The gso_type.
        kind: u8,
    },
    /// A segment would be longer than the link carries.
    #[error("GSO segments of {len} bytes are longer than the link's {max}")]
    OverMtu {
        /// Headers plus gso_size.
        len: usize,
        /// MTU plus Ethernet header (and VLAN tag).
        max: usize,
    },
}

/// What one frame is on the wire: one packet, or a GSO frame's segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireSize {
    /// The frame as the device got it, without the virtio header.
    pub frame_len: usize,
    /// Packets on the wire.
    pub packets: u64,
    /// Their bytes, Ethernet header included (no preamble or FCS).
    pub bytes: u64,
    /// Their IP packets' bytes (0 when not IP).
    pub ip_bytes: u64,
}

impl WireSize {
    /// A frame of `frame_len` bytes with headers `parsed` (if read) that is no GSO frame.
    pub fn single(frame_len: usize, parsed: Option<&FrameHeaders>) -> Self {
        Self {
            frame_len,
            packets: 1,
            bytes: to_u64(frame_len),
            ip_bytes: parsed.and_then(|h| h.ip).map_or(0, |ip| u64::from(ip.len)),
        }
    }

    /// The segments of GSO frame `gso` of `frame_len` bytes whose headers are `parsed`, on a
    /// link of `mtu` (`None`: no limit known).
    ///
    /// # Errors
    /// [`GsoError`]: the frame breaks one of the module's rules.
    pub fn segments(
        gso: Gso,
        frame_len: usize,
        parsed: Option<&FrameHeaders>,
        mtu: Option<usize>,
    ) -> Result<Self, GsoError> {
        if gso.size < MIN_GSO_SIZE {
            return Err(GsoError::SmallSize(gso.size));
        }
        if usize::from(gso.hdr_len) > frame_len {
            return Err(GsoError::HdrLen(gso.hdr_len));
        }
        if !gso.needs_csum {
            return Err(GsoError::NoChecksum);
        }
        let wrong = GsoError::WrongHeaders { kind: gso.kind };
        let headers = parsed.ok_or(wrong)?;
        let ip = headers.ip.ok_or(wrong)?;
        let want = match u32::from(gso.kind) {
            VIRTIO_NET_HDR_GSO_TCPV4 if ip.src.is_ipv4() => TCP,
            VIRTIO_NET_HDR_GSO_TCPV6 if ip.src.is_ipv6() => TCP,
            VIRTIO_NET_HDR_GSO_UDP_L4 => UDP,
            _ => return Err(wrong),
        };
        let hdrs = usize::from(ip.headers_len);
        if ip.protocol != want || hdrs == 0 || hdrs > frame_len {
            return Err(wrong);
        }
        let l2 = ETH_HDR_LEN + usize::from(headers.vlan_tags) * VLAN_TAG_LEN;
        if let Some(mtu) = mtu {
            let max = mtu + l2;
            let len = hdrs + usize::from(gso.size);
            if len > max {
                return Err(GsoError::OverMtu { len, max });
            }
        }
        let payload = frame_len - hdrs;
        let segments = payload.div_ceil(usize::from(gso.size)).max(1);
        let repeated = to_u64(segments - 1);
        Ok(Self {
            frame_len,
            packets: to_u64(segments),
            bytes: to_u64(frame_len) + repeated * to_u64(hdrs),
            ip_bytes: u64::from(ip.len) + repeated * to_u64(hdrs.saturating_sub(l2)),
        })
    }
}

/// Linux's `TCP_MIN_MSS` (include/net/tcp.h): no TCP stack segments smaller, and a smaller
/// `gso_size` would turn one descriptor chain into tens of thousands of packets.
pub const MIN_GSO_SIZE: u16 = 88;

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// A header value as the byte it is stored in.
fn flag(v: u32) -> u8 {
    u8::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::virtio::net::headers::tests::tcp4_frame as tcp4;
    use crate::virtio::net::headers::{parse, IpHeaders};

    /// A virtio header: NEEDS_CSUM, `gso_type`, `gso_size` (virtio 1.2 section 5.1.6).
    fn hdr(gso_type: u8, gso_size: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = 1;
        h[1] = gso_type;
        h[4..6].copy_from_slice(&gso_size.to_le_bytes());
        h
    }

    #[test]
    fn gso_fields_are_read_from_the_header() {
        assert_eq!(Gso::of(&[0u8; 12]), None);
        assert_eq!(Gso::of(&[1u8; 11]), None, "cut short");
        let g = Gso::of(&hdr(0x81, 1448)).expect("TCPV4 with ECN");
        assert_eq!((g.kind, g.size, g.needs_csum), (1, 1448, true));
    }

    #[test]
    fn a_64_kib_tso_frame_is_its_segments_on_the_wire() {
        // 14 + 20 + 32 = 66 header bytes; 65 000 payload bytes at MSS 1 448: 45 segments
        // (44 full, one of 1 288).
        let len = 66 + 65_000;
        let f = tcp4(len);
        let parsed = parse(&f[..128], len).expect("parse");
        assert_eq!(parsed.ip.expect("ip").headers_len, 66);
        let gso = Gso::of(&hdr(1, 1448)).expect("gso");
        let w = WireSize::segments(gso, len, Some(&parsed), Some(1500)).expect("fits");
        assert_eq!(w.packets, 45);
        assert_eq!(w.bytes, 65_000 + 45 * 66);
        assert_eq!(w.ip_bytes, 65_000 + 45 * 52);
        // Exactly one MSS: one segment, the frame itself.
        let f = tcp4(66 + 1448);
        let parsed = parse(&f, f.len()).expect("parse");
        let w = WireSize::segments(gso, f.len(), Some(&parsed), Some(1500)).expect("fits");
        assert_eq!((w.packets, w.bytes), (1, 1514));
        assert_eq!(w, WireSize::single(f.len(), Some(&parsed)));
    }

    #[test]
    fn gso_frames_that_break_the_rules_are_refused() {
        let len = 66 + 10_000;
        let f = tcp4(len);
        let parsed = parse(&f[..128], len).expect("parse");
        let p = Some(&parsed);
        let seg = |h: [u8; 12], mtu| WireSize::segments(Gso::of(&h).expect("gso"), len, p, mtu);
        assert_eq!(seg(hdr(1, 0), None), Err(GsoError::SmallSize(0)));
        assert_eq!(seg(hdr(1, 87), None), Err(GsoError::SmallSize(87)));
        assert!(seg(hdr(1, 88), None).is_ok());
        let mut long_hdr = hdr(1, 1448);
        long_hdr[2..4].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(seg(long_hdr, None), Err(GsoError::HdrLen(u16::MAX)));
        let mut no_csum = hdr(1, 1448);
        no_csum[0] = 0;
        assert_eq!(seg(no_csum, None), Err(GsoError::NoChecksum));
        assert_eq!(
            seg(hdr(4, 1448), None),
            Err(GsoError::WrongHeaders { kind: 4 }),
            "TCPV6 on an IPv4 packet"
        );
        assert_eq!(
            seg(hdr(5, 1448), None),
            Err(GsoError::WrongHeaders { kind: 5 }),
            "UDP_L4 on TCP"
        );
        // 66 + 1 449 = 1 515 > 1 514; the same frame without a known MTU is fine.
        assert_eq!(
            seg(hdr(1, 1449), Some(1500)),
            Err(GsoError::OverMtu {
                len: 1515,
                max: 1514
            })
        );
        assert!(seg(hdr(1, 1449), None).is_ok());
        let gso = Gso::of(&hdr(1, 1448)).expect("gso");
        assert_eq!(
            WireSize::segments(gso, len, None, None),
            Err(GsoError::WrongHeaders { kind: 1 }),
            "headers not read"
        );
        let arp_like = FrameHeaders { ip: None, ..parsed };
        assert!(WireSize::segments(gso, len, Some(&arp_like), None).is_err());
        let cut = FrameHeaders {
            ip: Some(IpHeaders {
                headers_len: 0,
                ..parsed.ip.expect("ip")
            }),
            ..parsed
        };
        assert!(WireSize::segments(gso, len, Some(&cut), None).is_err());
        assert_eq!(
            parsed.ip.map(|i| i.src),
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        );
    }
}
