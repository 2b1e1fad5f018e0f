//! The anti-spoofing stage of the TX pipeline: a sliver may only send frames from its own MAC
//! and, once it has an address, from its own IPv4 address (ARP included). IPv6 is allowed only
//! from link-local (fe80::/10) or unspecified sources, since slivers get no global IPv6
//! address. A frame that fails is dropped with [`Verdict::DroppedSpoof`].

use std::net::{IpAddr, Ipv4Addr};

use packet::Verdict;

use super::headers::FrameHeaders;

/// The addresses a sliver NIC may send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AntiSpoofing {
    /// The NIC's MAC.
    pub mac: [u8; 6],
    /// The sliver's IPv4 address, once set.
    pub ipv4: Option<Ipv4Addr>,
}

impl AntiSpoofing {
    /// The stage: `h` (a guest frame's headers) passes, or is dropped as spoofed.
    pub fn check(&self, h: &FrameHeaders) -> Result<(), Verdict> {
        if self.allows(h) {
            Ok(())
        } else {
            Err(Verdict::DroppedSpoof)
        }
    }

    /// Whether `h` is a frame this NIC may send.
    pub fn allows(&self, h: &FrameHeaders) -> bool {
        if h.src_mac != self.mac {
            return false;
        }
        if let Some((mac, ip)) = h.arp_sender {
            return mac == self.mac && self.ipv4.is_none_or(|own| own == ip);
        }
        match h.ip.map(|ip| ip.src) {
            Some(IpAddr::V4(src)) => self.ipv4.is_none_or(|own| own == src),
            Some(IpAddr::V6(src)) => src.is_unspecified() || (src.segments()[0] & 0xffc0) == 0xfe80,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::headers::tests::ipv4_frame;
    use crate::virtio::net::headers::{parse, ETH_ARP};

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn guard(ip: Option<[u8; 4]>) -> AntiSpoofing {
        AntiSpoofing {
            mac: MAC,
            ipv4: ip.map(Ipv4Addr::from),
        }
    }

    #[test]
    fn own_mac_and_address_only() {
        let g = guard(Some([10, 0, 0, 2]));
        let ok = ipv4_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1], 17);
        assert!(g.allows(&parse(&ok, ok.len()).expect("parse")));
        assert_eq!(g.check(&parse(&ok, ok.len()).expect("parse")), Ok(()));
        let other_ip = ipv4_frame(MAC, [10, 0, 0, 3], [10, 0, 0, 1], 17);
        assert_eq!(
            g.check(&parse(&other_ip, other_ip.len()).expect("parse")),
            Err(Verdict::DroppedSpoof)
        );
        let other_mac = ipv4_frame([2, 0, 0, 0, 0, 8], [10, 0, 0, 2], [10, 0, 0, 1], 17);
        assert!(!g.allows(&parse(&other_mac, other_mac.len()).expect("parse")));
        // Before an address is set, any IPv4 source from its own MAC goes.
        assert!(guard(None).allows(&parse(&other_ip, other_ip.len()).expect("parse")));
    }

    #[test]
    fn arp_must_not_claim_another_address() {
        let g = guard(Some([10, 0, 0, 2]));
        let arp = |sender_ip: [u8; 4]| {
            let mut f = vec![0xff; 6];
            f.extend_from_slice(&MAC);
            f.extend_from_slice(&ETH_ARP.to_be_bytes());
            let mut a = [0u8; 28];
            a[8..14].copy_from_slice(&MAC);
            a[14..18].copy_from_slice(&sender_ip);
            f.extend_from_slice(&a);
            f
        };
        let own = arp([10, 0, 0, 2]);
        let forged = arp([10, 0, 0, 1]);
        assert!(g.allows(&parse(&own, own.len()).expect("arp")));
        assert!(!g.allows(&parse(&forged, forged.len()).expect("arp")));
    }
}
