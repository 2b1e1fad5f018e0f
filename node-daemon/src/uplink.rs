//! The node's way out (`slicevisor node --uplink IFACE`): the interface, its addresses, the
//! network slivers' addresses come from (`--sliver-net`), the networks no sliver may reach
//! (`--deny-dst`: the site's own), the resolvers slivers are given (`--resolver`), and IPv4
//! forwarding for the uplink and the slivers' TAPs only. Without `--uplink` slivers are
//! host-only: no forwarding, no rules, no destination checks.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;

use crate::sliver_addresses::{overlap, SLIVER_PREFIX};

/// The node's network settings, as given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The outside interface.
    pub uplink: Option<String>,
    /// Where slivers' /30s are allocated when a spec gives no addresses.
    pub sliver_net: Option<Ipv4Net>,
    /// Networks slivers may not reach (the site's).
    pub deny_dst: Vec<Ipv4Net>,
    /// DNS resolvers slivers are told to use.
    pub resolvers: Vec<Ipv4Addr>,
}

/// The node's network: the flags, and the uplink found at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeNet {
    /// The flags.
    pub config: NetConfig,
    /// The uplink (`None`: host-only slivers).
    pub uplink: Option<Uplink>,
}

/// The uplink as found at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    /// Interface name.
    pub name: String,
    /// Its IPv4 addresses with their prefixes.
    pub addrs: Vec<Ipv4Net>,
}

impl Uplink {
    /// The address forwarded ports are published on (the first one), if any.
    pub fn public_addr(&self) -> Option<Ipv4Addr> {
        self.addrs.first().map(Ipv4Net::addr)
    }
}

/// Errors of the network flags; each names its flag.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// No such interface.
    #[error("--uplink {0}: no such interface")]
    Missing(String),
    /// Netlink failed.
    #[error("--uplink {name}: {source}")]
    Netlink {
        /// Interface.
        name: String,
        /// Why.
        source: rtnetlink::Error,
    },
    /// The sliver network overlaps the uplink's.
    #[error("--sliver-net {sliver_net} overlaps {addr} of --uplink {uplink}")]
    Overlap {
        /// The flag's value.
        sliver_net: Ipv4Net,
        /// The uplink's network.
        addr: Ipv4Net,
        /// Interface.
        uplink: String,
    },
    /// The sliver network holds no /30.
    #[error("--sliver-net {0}: too small for a /30 per sliver")]
    TooSmall(Ipv4Net),
    /// A flag that needs `--uplink`.
    #[error("{0} needs --uplink")]
    NeedsUplink(&'static str),
    /// Forwarding could not be enabled.
    #[error("enabling IPv4 forwarding on {iface}: {source}")]
    Forwarding {
        /// Interface.
        iface: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Find `name` and its IPv4 addresses.
///
/// # Errors
/// It does not exist, or netlink fails.
pub async fn resolve(handle: &rtnetlink::Handle, name: &str) -> Result<Uplink, UplinkError> {
    let netlink = |source| UplinkError::Netlink {
        name: name.to_string(),
        source,
    };
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    let link = match links.try_next().await {
        Ok(Some(link)) => link,
        Ok(None) | Err(rtnetlink::Error::NetlinkError(_)) => {
            return Err(UplinkError::Missing(name.to_string()))
        }
        Err(e) => return Err(netlink(e)),
    };
    let index = link.header.index;
    let mut found = Vec::new();
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    while let Some(msg) = addrs.try_next().await.map_err(netlink)? {
        for attr in &msg.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip))
            | AddressAttribute::Address(IpAddr::V4(ip)) = attr
            {
                if let Ok(net) = Ipv4Net::new(*ip, msg.header.prefix_len) {
                    if !found.contains(&net) {
                        found.push(net);
                    }
                }
            }
        }
    }
    Ok(Uplink {
        name: name.to_string(),
        addrs: found,
    })
}

impl NetConfig {
    /// Check the flags against each other and the uplink found.
    ///
    /// # Errors
    /// `--sliver-net` overlaps the uplink's networks or is smaller than a /30; `--deny-dst`,
    /// `--resolver` or `--sliver-net` without `--uplink`.
    pub fn check(&self, uplink: Option<&Uplink>) -> Result<(), UplinkError> {
        let Some(uplink) = uplink else {
            if self.sliver_net.is_some() {
                return Err(UplinkError::NeedsUplink("--sliver-net"));
            }
            if !self.deny_dst.is_empty() {
                return Err(UplinkError::NeedsUplink("--deny-dst"));
            }
            if !self.resolvers.is_empty() {
                return Err(UplinkError::NeedsUplink("--resolver"));
            }
            return Ok(());
        };
        if let Some(pool) = self.sliver_net {
            if pool.prefix_len() > SLIVER_PREFIX {
                return Err(UplinkError::TooSmall(pool));
            }
            if let Some(addr) = uplink.addrs.iter().find(|a| overlap(a.trunc(), pool)) {
                return Err(UplinkError::Overlap {
                    sliver_net: pool,
                    addr: *addr,
                    uplink: uplink.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// What every sliver's VMM drops as `dropped-policy` (anti-spoofing's `deny_dst`): the
    /// site's networks, the slivers' own network (other slivers, the node's side of each
    /// TAP), and the node's uplink addresses.
    pub fn vmm_deny(&self, uplink: &Uplink) -> Vec<Ipv4Net> {
        let mut deny = self.deny_dst.clone();
        deny.extend(self.sliver_net);
        deny.extend(
            uplink
                .addrs
                .iter()
                .filter_map(|a| Ipv4Net::new(a.addr(), 32).ok()),
        );
        deny
    }
}

/// Turn on IPv4 forwarding for packets arriving on `iface` (`net.ipv4.conf.IFACE.forwarding`,
/// in the daemon's network namespace).
///
/// # Errors
/// The sysctl cannot be written.
pub fn enable_forwarding(iface: &str) -> Result<(), UplinkError> {
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{iface}/forwarding"), b"1").map_err(|source| {
        UplinkError::Forwarding {
            iface: iface.to_string(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uplink() -> Uplink {
        Uplink {
            name: "eth0".into(),
            addrs: vec!["198.51.100.7/24".parse().expect("net")],
        }
    }

    #[test]
    fn flags_are_checked_against_each_other_and_the_uplink() {
        let mut c = NetConfig {
            sliver_net: Some("10.9.0.0/16".parse().expect("net")),
            ..NetConfig::default()
        };
        assert!(c.check(Some(&uplink())).is_ok());
        let e = c.check(None).expect_err("no uplink");
        assert!(e.to_string().contains("--sliver-net needs --uplink"), "{e}");
        c.sliver_net = Some("198.51.0.0/16".parse().expect("net"));
        let e = c.check(Some(&uplink())).expect_err("overlap");
        assert!(
            e.to_string()
                .starts_with("--sliver-net 198.51.0.0/16 overlaps"),
            "{e}"
        );
        c.sliver_net = Some("10.9.0.0/31".parse().expect("net"));
        assert!(matches!(
            c.check(Some(&uplink())),
            Err(UplinkError::TooSmall(_))
        ));
    }

    #[test]
    fn the_vmm_denies_the_site_the_slivers_and_the_node() {
        let c = NetConfig {
            sliver_net: Some("10.9.0.0/16".parse().expect("net")),
            deny_dst: vec!["192.0.2.0/24".parse().expect("net")],
            ..NetConfig::default()
        };
        let deny: Vec<String> = c
            .vmm_deny(&uplink())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(deny, ["192.0.2.0/24", "10.9.0.0/16", "198.51.100.7/32"]);
    }
}
