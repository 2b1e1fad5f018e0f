//! The anti-spoofing stage of the TX pipeline: what a sliver may send. Its NIC is an untagged
//! access port for IPv4, ARP and IPv6, and every frame must be attributable to the sliver:
//!
//! | frame | passes when | else |
//! |---|---|---|
//! | any | the source MAC is the NIC's | [`Verdict::DroppedSpoof`] |
//! | VLAN-tagged (802.1Q, 802.1ad, QinQ; any depth) | never | [`Verdict::DroppedPolicy`] |
//! | IPv4 | the source is the sliver's address (any, until it has one) | [`Verdict::DroppedSpoof`] |
//! | IPv4 | the destination is in none of the NIC's denied networks (`deny_dst`: other slivers, the node itself, the site) | [`Verdict::DroppedPolicy`] |
//! | ARP | the sender MAC is the NIC's and the sender address the sliver's | [`Verdict::DroppedSpoof`] |
//! | IPv6 | the source is link-local (fe80::/10) or unspecified: slivers get no global IPv6 | [`Verdict::DroppedSpoof`] |
//! | IPv6 ICMPv6 Router Advertisement, Redirect | never: a sliver is no router | [`Verdict::DroppedPolicy`] |
//! | IPv6 ICMPv6 Neighbor/Router Solicitation, Neighbor Advertisement | every link-layer address option is the NIC's MAC | [`Verdict::DroppedSpoof`] |
//! | IPv6 other ICMPv6, TCP, UDP | (the source rule) | |
//! | IPv6 anything else, or an upper layer the head does not reach | never | [`Verdict::DroppedPolicy`] |
//! | any other EtherType (LLDP, MPLS, PPPoE, 802.1X, 802.3 length fields, ...) | never | [`Verdict::DroppedPolicy`] |
//!
//! A frame whose headers do not parse never gets here: the frame checks drop it as
//! malformed (ARP that is not Ethernet/IPv4 ARP included). So nothing the stage cannot
//! classify passes as harmless.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use packet::Verdict;

use super::headers::{
    FrameHeaders, IpHeaders, ETH_ARP, ETH_IPV4, ETH_IPV6, ND_REDIRECT, ND_ROUTER_ADVERT,
};

/// IANA protocol numbers.
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;

/// The addresses a sliver NIC may send from, and the IPv4 networks it may not send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AntiSpoofing {
    /// The NIC's MAC.
    pub mac: [u8; 6],
    /// The sliver's IPv4 address, once set.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv4 destinations the sliver may not send to (empty: anywhere).
    pub deny_dst: Vec<Ipv4Net>,
}

impl AntiSpoofing {
    /// The stage: `h` (a guest frame's headers) passes, or is dropped with the reason.
    pub fn check(&self, h: &FrameHeaders) -> Result<(), Verdict> {
        if h.src_mac != self.mac {
            return Err(Verdict::DroppedSpoof);
        }
        if h.vlan_tags > 0 {
            return Err(Verdict::DroppedPolicy);
        }
        let own_source = match (h.ethertype, h.arp_sender, h.ip) {
            (ETH_ARP, Some((mac, ip)), _) => {
                mac == self.mac && self.ipv4.is_none_or(|own| own == ip)
            }
            (
                ETH_IPV4,
                _,
                Some(IpHeaders {
                    src: IpAddr::V4(src),
                    ..
                }),
            ) => {
                if let Some(IpHeaders {
                    dst: IpAddr::V4(dst),
                    ..
                }) = h.ip
                {
                    if self.own_source(src) && self.deny_dst.iter().any(|n| n.contains(&dst)) {
                        return Err(Verdict::DroppedPolicy);
                    }
                }
                self.own_source(src)
            }
            (
                ETH_IPV6,
                _,
                Some(
                    ip @ IpHeaders {
                        src: IpAddr::V6(src),
                        ..
                    },
                ),
            ) => {
                let link_local = src.is_unspecified() || (src.segments()[0] & 0xffc0) == 0xfe80;
                link_local && self.ipv6_allowed(&ip)?
            }
            _ => return Err(Verdict::DroppedPolicy),
        };
        if own_source {
            Ok(())
        } else {
            Err(Verdict::DroppedSpoof)
        }
    }

    fn own_source(&self, src: Ipv4Addr) -> bool {
        self.ipv4.is_none_or(|own| own == src)
    }

    /// What an IPv6 packet from a link-local source may carry: `Ok(false)` when an ND option
    /// names another link-layer address, `Err` when the kind of packet is not allowed.
    fn ipv6_allowed(&self, ip: &IpHeaders) -> Result<bool, Verdict> {
        match (ip.protocol, ip.icmpv6) {
            (ICMPV6, Some(m)) if m.kind == ND_ROUTER_ADVERT || m.kind == ND_REDIRECT => {
                Err(Verdict::DroppedPolicy)
            }
            (ICMPV6, Some(m)) => Ok(m.ll_addrs.iter().flatten().all(|a| *a == self.mac)),
            (TCP | UDP, _) => Ok(true),
            _ => Err(Verdict::DroppedPolicy),
        }
    }

    /// Whether `h` is a frame this NIC may send.
    pub fn allows(&self, h: &FrameHeaders) -> bool {
        self.check(h).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::headers::parse;
    use crate::virtio::net::headers::tests::{
        ipv4_frame, ipv6_frame, neighbor_solicit, tagged, ARP_REQUEST,
    };

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    /// An ARP request from the NIC's MAC: who has `target`, tell `sender`.
    fn arp(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&MAC);
        f.extend_from_slice(&ETH_ARP.to_be_bytes());
        let mut a = [0u8; 28];
        a[..8].copy_from_slice(&ARP_REQUEST);
        a[8..14].copy_from_slice(&MAC);
        a[14..18].copy_from_slice(&sender);
        a[24..28].copy_from_slice(&target);
        f.extend_from_slice(&a);
        f
    }

    fn guard(ip: Option<[u8; 4]>) -> AntiSpoofing {
        AntiSpoofing {
            mac: MAC,
            ipv4: ip.map(Ipv4Addr::from),
            deny_dst: Vec::new(),
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
    fn denied_destinations_are_policy_drops_and_a_spoofed_source_stays_a_spoof() {
        let mut g = guard(Some([10, 0, 0, 2]));
        g.deny_dst = vec![
            "10.0.0.1/32".parse().expect("net"),
            "192.168.0.0/16".parse().expect("net"),
        ];
        let check = |f: &[u8]| g.check(&parse(f, f.len()).expect("parse"));
        for dst in [[10, 0, 0, 1], [192, 168, 0, 0], [192, 168, 255, 255]] {
            assert_eq!(
                check(&ipv4_frame(MAC, [10, 0, 0, 2], dst, 6)),
                Err(Verdict::DroppedPolicy),
                "{dst:?}"
            );
        }
        for dst in [[10, 0, 0, 3], [192, 169, 0, 0], [8, 8, 8, 8]] {
            assert_eq!(
                check(&ipv4_frame(MAC, [10, 0, 0, 2], dst, 6)),
                Ok(()),
                "{dst:?}"
            );
        }
        assert_eq!(
            check(&ipv4_frame(MAC, [10, 0, 0, 9], [10, 0, 0, 1], 6)),
            Err(Verdict::DroppedSpoof)
        );
        // ARP for a denied address is how the guest finds its gateway: it passes.
        assert_eq!(check(&arp([10, 0, 0, 2], [10, 0, 0, 1])), Ok(()));
    }

    #[test]
    fn tagged_frames_and_other_ethertypes_never_pass() {
        let g = guard(Some([10, 0, 0, 2]));
        for src in [[10, 0, 0, 66], [10, 0, 0, 2]] {
            let f = ipv4_frame(MAC, src, [10, 0, 0, 1], 17);
            for tpids in [
                &[0x88a8, 0x8100][..],
                &[0x8100, 0x8100],
                &[0x9100, 0x8100],
                &[0x88a8],
                &[0x8100],
            ] {
                let t = tagged(&f, tpids);
                assert_eq!(
                    g.check(&parse(&t, t.len()).expect("parse")),
                    Err(Verdict::DroppedPolicy),
                    "{tpids:x?} from {src:?}"
                );
            }
        }
        for ethertype in [0x88ccu16, 0x8847, 0x8863, 0x888e, 0x0801, 0x1234] {
            let mut f = ipv4_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1], 17);
            f[12..14].copy_from_slice(&ethertype.to_be_bytes());
            assert_eq!(
                g.check(&parse(&f, f.len()).expect("parse")),
                Err(Verdict::DroppedPolicy),
                "{ethertype:#06x}"
            );
        }
    }

    #[test]
    fn ipv6_from_link_local_only_and_no_router_messages_or_foreign_nd_addresses() {
        let g = guard(Some([10, 0, 0, 2]));
        let ll = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 9);
        let check = |f: &[u8]| g.check(&parse(f, f.len()).expect("parse"));
        assert_eq!(
            check(&ipv6_frame(MAC, ll, ICMPV6, &neighbor_solicit(MAC))),
            Ok(())
        );
        let foreign = neighbor_solicit([2, 0, 0, 0, 0, 0x66]);
        assert_eq!(
            check(&ipv6_frame(MAC, ll, ICMPV6, &foreign)),
            Err(Verdict::DroppedSpoof)
        );
        // RFC 4861 types 134 (Router Advertisement) and 137 (Redirect).
        for kind in [134u8, 137] {
            let mut m = vec![kind, 0, 0, 0];
            m.resize(40, 0);
            assert_eq!(
                check(&ipv6_frame(MAC, ll, ICMPV6, &m)),
                Err(Verdict::DroppedPolicy),
                "type {kind}"
            );
        }
        let udp = [0x02, 0x22, 0x02, 0x23, 0, 8, 0, 0];
        assert_eq!(check(&ipv6_frame(MAC, ll, UDP, &udp)), Ok(()));
        let global = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);
        assert_eq!(
            check(&ipv6_frame(MAC, global, UDP, &udp)),
            Err(Verdict::DroppedSpoof)
        );
        // SCTP (132) from link-local: not a kind a sliver sends.
        assert_eq!(
            check(&ipv6_frame(MAC, ll, 132, &[0; 12])),
            Err(Verdict::DroppedPolicy)
        );
    }

    #[test]
    fn arp_must_not_claim_another_address() {
        let g = guard(Some([10, 0, 0, 2]));
        let own = arp([10, 0, 0, 2], [10, 0, 0, 1]);
        let forged = arp([10, 0, 0, 1], [10, 0, 0, 1]);
        assert!(g.allows(&parse(&own, own.len()).expect("arp")));
        assert!(!g.allows(&parse(&forged, forged.len()).expect("arp")));
    }
}
