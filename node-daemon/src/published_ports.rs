//! `net.ports`: ports of the node's uplink address forwarded to a sliver (DNAT in the node's
//! nftables table, `nft_rules`), their checks, and the ports the node's own services listen
//! on (`/proc/net/{tcp,udp}{,6}`, `proc(5)`), which no sliver may take.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::SliverError;

/// Most forwarded ports a sliver may have.
pub const MAX_PORTS: usize = 32;

/// A transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (IANA protocol 6).
    Tcp,
    /// UDP (IANA protocol 17).
    Udp,
}

impl Proto {
    /// The name nftables and `/proc/net` use.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One forwarded port: `node_port` on the node's uplink address to `sliver_port` on the
/// sliver's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortForward {
    /// `tcp` or `udp`.
    pub proto: Proto,
    /// Port on the node, 1-65535.
    pub node_port: u16,
    /// Port in the sliver, 1-65535.
    pub sliver_port: u16,
}

/// Check one sliver's ports: 1-65535, at most [`MAX_PORTS`], no (proto, node_port) twice.
/// The error names the field (`net.ports[i].node_port`).
pub fn validate(ports: &[PortForward]) -> Result<(), SliverError> {
    if ports.len() > MAX_PORTS {
        return Err(SliverError::invalid(
            "net.ports",
            format!("{} ports is over {MAX_PORTS}", ports.len()),
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        for (field, value) in [("node_port", p.node_port), ("sliver_port", p.sliver_port)] {
            if value == 0 {
                return Err(SliverError::invalid(
                    &format!("net.ports[{i}].{field}"),
                    "0 is not a port (1-65535)",
                ));
            }
        }
        if !seen.insert((p.proto, p.node_port)) {
            return Err(SliverError::invalid(
                &format!("net.ports[{i}].node_port"),
                format!("{} {} is given twice", p.proto.name(), p.node_port),
            ));
        }
    }
    Ok(())
}

/// The (protocol, port) pairs something on the node listens on (TCP sockets in LISTEN,
/// bound UDP sockets), IPv4 and IPv6, in this network namespace.
pub fn host_listeners() -> BTreeSet<(Proto, u16)> {
    let mut found = BTreeSet::new();
    for (proto, file, listening) in [
        (Proto::Tcp, "/proc/net/tcp", Some("0A")),
        (Proto::Tcp, "/proc/net/tcp6", Some("0A")),
        (Proto::Udp, "/proc/net/udp", None),
        (Proto::Udp, "/proc/net/udp6", None),
    ] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        found.extend(
            parse_listeners(&text, listening)
                .into_iter()
                .map(|p| (proto, p)),
        );
    }
    found
}

/// Local ports of the sockets in a `/proc/net/{tcp,udp}` table (`local_address` is
/// `ADDR:PORT` in hex; `st` the state, `0A` = TCP_LISTEN), those in state `state` if given.
fn parse_listeners(table: &str, state: Option<&str>) -> BTreeSet<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let st = fields.nth(1)?;
            if state.is_some_and(|want| want != st) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .filter(|&p| p != 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(proto: Proto, node_port: u16, sliver_port: u16) -> PortForward {
        PortForward {
            proto,
            node_port,
            sliver_port,
        }
    }

    #[test]
    fn each_bad_port_is_named() {
        assert!(validate(&[port(Proto::Tcp, 2222, 22), port(Proto::Udp, 2222, 53)]).is_ok());
        let field = |ports: &[PortForward]| {
            validate(ports)
                .expect_err("bad")
                .field()
                .map(str::to_string)
        };
        assert_eq!(
            field(&[port(Proto::Tcp, 0, 22)]).as_deref(),
            Some("net.ports[0].node_port")
        );
        assert_eq!(
            field(&[port(Proto::Tcp, 80, 80), port(Proto::Tcp, 81, 0)]).as_deref(),
            Some("net.ports[1].sliver_port")
        );
        assert_eq!(
            field(&[port(Proto::Tcp, 80, 80), port(Proto::Tcp, 80, 81)]).as_deref(),
            Some("net.ports[1].node_port")
        );
        let many: Vec<_> = (1..=33).map(|p| port(Proto::Tcp, p, p)).collect();
        assert_eq!(field(&many).as_deref(), Some("net.ports"));
    }

    #[test]
    fn listeners_are_read_from_the_proc_tables() {
        // proc(5)'s layout: sl, local_address, rem_address, st, ...
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                   0: 00000000:0016 00000000:0000 0A 00000000:00000000\n\
                   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000\n";
        assert_eq!(parse_listeners(tcp, Some("0A")), BTreeSet::from([22]));
        let udp6 = "  sl  local_address                         remote_address                        st\n\
                    0: 00000000000000000000000000000000:0035 00000000000000000000000000000000:0000 07\n";
        assert_eq!(parse_listeners(udp6, None), BTreeSet::from([53]));
    }
}
