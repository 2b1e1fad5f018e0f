//! The public side of slivers' connections: a thread that listens to the kernel's conntrack
//! events for new connections (`NETLINK_NETFILTER`, group `NFNLGRP_CONNTRACK_NEW`,
//! `linux/netfilter/nfnetlink.h`), and for each one a sliver opened that the node's
//! masquerade translated (its reply tuple's destination is not the sliver's address),
//! appends the mapping to the sliver's NAT log in the audit store
//! (`audit_store::nat_log`). Started on nodes with an uplink.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use audit_store::nat_log::{self, NatRecord};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// `NFNLGRP_CONNTRACK_NEW` (`linux/netfilter/nfnetlink.h`): group 1, bit 0 of the mask.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;

/// Which sliver has which address (kept by the rules' sync).
pub type SliverAddrs = Arc<RwLock<HashMap<Ipv4Addr, String>>>;

/// One direction of a conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FiveTuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: u8,
    src_port: u16,
    dst_port: u16,
}

fn five_tuple(tuples: &[Tuple]) -> FiveTuple {
    let mut t = FiveTuple::default();
    for tuple in tuples {
        match tuple {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => t.src = Some(*a),
                        IPTuple::DestinationAddress(a) => t.dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => t.protocol = u8::from(*n),
                        ProtoTuple::SourcePort(port) => t.src_port = *port,
                        ProtoTuple::DestinationPort(port) => t.dst_port = *port,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    t
}

/// The mapping a new-connection event shows, if it is a translated connection of a sliver:
/// (sliver, record).
fn mapping(
    attrs: &[ConntrackAttribute],
    slivers: &HashMap<Ipv4Addr, String>,
    time_ns: u64,
) -> Option<(String, NatRecord)> {
    let (mut orig, mut reply) = (None, None);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(five_tuple(t)),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(five_tuple(t)),
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    let Some(IpAddr::V4(src)) = orig.src else {
        return None;
    };
    let sliver = slivers.get(&src)?;
    // The reply goes to the node's address and port the outside saw.
    let (public_addr, public_port) = (reply.dst?, reply.dst_port);
    if public_addr == IpAddr::V4(src) {
        return None;
    }
    Some((
        sliver.clone(),
        NatRecord {
            time_ns,
            protocol: orig.protocol,
            src: IpAddr::V4(src),
            src_port: orig.src_port,
            dst: orig.dst?,
            dst_port: orig.dst_port,
            public_addr,
            public_port,
        },
    ))
}

/// Start the thread; it writes under `state_dir`'s audit directories for as long as the
/// daemon runs.
///
/// # Errors
/// The netlink socket cannot be opened or joined to the group.
pub fn spawn(state_dir: PathBuf, slivers: SliverAddrs) -> std::io::Result<()> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind(&SocketAddr::new(0, 0))?;
    socket.add_membership(NFNLGRP_CONNTRACK_NEW)?;
    // Bursts of connections overflow a small buffer (ENOBUFS: events lost, counted below).
    let _ = socket.set_rx_buf_sz(4 << 20);
    std::thread::Builder::new()
        .name("nat-watch".into())
        .spawn(move || watch(&socket, &state_dir, &slivers))?;
    Ok(())
}

fn watch(socket: &Socket, state_dir: &std::path::Path, slivers: &SliverAddrs) {
    let mut lost = 0u64;
    loop {
        let buf = match socket.recv_from_full() {
            Ok((buf, _)) => buf,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                lost += 1;
                log::warn!(
                    "conntrack events lost (socket overrun {lost} times): NAT log incomplete"
                );
                continue;
            }
            Err(e) => {
                log::error!("conntrack events: {e}; the NAT log stops");
                return;
            }
        };
        let time_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let mut offset = 0;
        while offset < buf.len() {
            let Ok(msg) = NetlinkMessage::<NetfilterMessage>::deserialize(&buf[offset..]) else {
                break;
            };
            let len = msg.header.length as usize;
            if len == 0 {
                break;
            }
            offset += (len + 3) & !3;
            let NetlinkPayload::InnerMessage(NetfilterMessage {
                inner: NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)),
                ..
            }) = msg.payload
            else {
                continue;
            };
            let found = {
                let map = slivers.read().unwrap_or_else(|p| p.into_inner());
                mapping(&attrs, &map, time_ns)
            };
            if let Some((sliver, record)) = found {
                let dir = audit_store::sliver_dir(state_dir, &sliver);
                if let Err(e) = nat_log::append(&dir, &record) {
                    log::error!("NAT log of {sliver}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_netfilter::conntrack::Protocol;

    use super::*;

    fn tuple(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src.parse().expect("ip")),
                IPTuple::DestinationAddress(dst.parse().expect("ip")),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Tcp),
                ProtoTuple::SourcePort(sport),
                ProtoTuple::DestinationPort(dport),
            ]),
        ]
    }

    #[test]
    fn a_translated_connection_of_a_sliver_is_its_mapping() {
        let slivers = HashMap::from([("10.99.0.2".parse().expect("ip"), "a".to_string())]);
        let attrs = [
            ConntrackAttribute::CtaTupleOrig(tuple("10.99.0.2", 40000, "198.51.100.2", 80)),
            ConntrackAttribute::CtaTupleReply(tuple("198.51.100.2", 80, "198.51.100.1", 61000)),
        ];
        let (sliver, r) = mapping(&attrs, &slivers, 7).expect("mapping");
        assert_eq!(sliver, "a");
        assert_eq!(
            (r.protocol, r.src_port, r.dst_port, r.public_port),
            (6, 40000, 80, 61000)
        );
        assert_eq!(r.public_addr.to_string(), "198.51.100.1");
        // Not translated (a published port's DNAT seen from the sliver's side), or not a sliver's.
        let inbound = [
            ConntrackAttribute::CtaTupleOrig(tuple("10.99.0.2", 40000, "198.51.100.2", 80)),
            ConntrackAttribute::CtaTupleReply(tuple("198.51.100.2", 80, "10.99.0.2", 40000)),
        ];
        assert_eq!(mapping(&inbound, &slivers, 7), None);
        let other = [
            ConntrackAttribute::CtaTupleOrig(tuple("10.99.0.9", 1, "198.51.100.2", 80)),
            ConntrackAttribute::CtaTupleReply(tuple("198.51.100.2", 80, "198.51.100.1", 2)),
        ];
        assert_eq!(mapping(&other, &slivers, 7), None);
    }
}
