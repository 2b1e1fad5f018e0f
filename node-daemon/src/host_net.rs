//! A sliver's host side of the network: a persistent TAP (created with `TUNSETPERSIST`), its
//! host address (exactly that one) and link state set with rtnetlink, its removal on delete,
//! and the sliver TAPs present on the host (to remove those of deleted slivers).

use std::net::{IpAddr, Ipv4Addr};

use devices::virtio::net::Tap;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkInfo};
use rtnetlink::{Handle, LinkUnspec};

/// The kernel runs one dump at a time on a netlink socket (a second gets EBUSY), and all
/// of the daemon's requests share one socket: dumps (link and address listings) take turns.
static DUMPS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Errors of the host network set-up; each names the interface.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    /// Creating the TAP.
    #[error(transparent)]
    Tap(#[from] devices::virtio::net::tap::TapError),
    /// A netlink request failed.
    #[error("{tap}: {what}: {source}")]
    Netlink {
        /// Interface.
        tap: String,
        /// Which request.
        what: &'static str,
        /// Why.
        source: rtnetlink::Error,
    },
    /// The interface vanished between steps.
    #[error("{0}: no such interface")]
    Missing(String),
}

/// The TAP name of sliver `sliver`: `sv-<name>` when that fits IFNAMSIZ, else `sv` and a
/// 48-bit hash of the name (12 hex digits).
pub fn tap_name(sliver: &str) -> String {
    let readable = format!("sv-{sliver}");
    if readable.len() <= 15 {
        return readable;
    }
    let hash = sliver.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("sv{:012x}", hash & 0xffff_ffff_ffff)
}

/// Whether `name` has the shape [`tap_name`] gives (only such links are ever removed as
/// strays).
pub fn is_sliver_tap_name(name: &str) -> bool {
    match name.strip_prefix("sv-") {
        Some(rest) => {
            (1..=12).contains(&rest.len())
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        }
        None => name.strip_prefix("sv").is_some_and(|hex| {
            hex.len() == 12
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }),
    }
}

/// The TUN/TAP links on the host whose names have the shape of sliver TAPs.
pub async fn sliver_taps(handle: &Handle) -> Result<Vec<String>, HostNetError> {
    let _dump = DUMPS.lock().await;
    let mut links = handle.link().get().execute();
    let mut found = Vec::new();
    loop {
        let link = match links.try_next().await {
            Ok(Some(link)) => link,
            Ok(None) => break,
            Err(source) => {
                return Err(HostNetError::Netlink {
                    tap: "sv*".into(),
                    what: "listing links",
                    source,
                })
            }
        };
        let mut name = None;
        let mut tun = false;
        for attr in &link.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    tun |= infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Tun)));
                }
                _ => {}
            }
        }
        if let Some(name) = name.filter(|n| tun && is_sliver_tap_name(n)) {
            found.push(name);
        }
    }
    Ok(found)
}

async fn link_index(handle: &Handle, tap: &str) -> Result<Option<u32>, HostNetError> {
    let mut links = handle.link().get().match_name(tap.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // The kernel answers ENODEV for a name it does not know.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(source) => Err(HostNetError::Netlink {
            tap: tap.to_string(),
            what: "looking up the link",
            source,
        }),
    }
}

/// Remove every IPv4 address of link `index` but `host/prefix`.
async fn remove_other_addresses(
    handle: &Handle,
    tap: &str,
    index: u32,
    host: Ipv4Addr,
    prefix: u8,
) -> Result<(), HostNetError> {
    let netlink = |what| {
        let tap = tap.to_string();
        move |source| HostNetError::Netlink { tap, what, source }
    };
    let dump = DUMPS.lock().await;
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut others = Vec::new();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(netlink("listing addresses"))?
    {
        let v4 = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(a)) => Some(*a),
            _ => None,
        });
        if let Some(addr) = v4 {
            if (addr, msg.header.prefix_len) != (host, prefix) {
                others.push(msg);
            }
        }
    }
    drop(dump);
    for msg in others {
        handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(netlink("removing a stale address"))?;
    }
    Ok(())
}

/// Create (or keep) the persistent TAP `tap`, give it exactly the address `host/prefix`
/// (removing any other IPv4 address) and bring it up. Idempotent.
pub async fn ensure_tap(
    handle: &Handle,
    tap: &str,
    host: Ipv4Addr,
    prefix: u8,
) -> Result<(), HostNetError> {
    if link_index(handle, tap).await?.is_none() {
        let fd = Tap::open(tap)?;
        fd.set_persistent(true)?;
    }
    let index = link_index(handle, tap)
        .await?
        .ok_or_else(|| HostNetError::Missing(tap.to_string()))?;
    let netlink = |what| {
        let tap = tap.to_string();
        move |source| HostNetError::Netlink { tap, what, source }
    };
    match handle
        .address()
        .add(index, IpAddr::V4(host), prefix)
        .execute()
        .await
    {
        Ok(()) => {}
        // Already there from an earlier run.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
        Err(e) => return Err(netlink("adding the host address")(e)),
    }
    remove_other_addresses(handle, tap, index, host, prefix).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink("setting the link up"))
}

/// Remove the TAP `tap` (absent, or gone meanwhile, is fine).
pub async fn remove_tap(handle: &Handle, tap: &str) -> Result<(), HostNetError> {
    let Some(index) = link_index(handle, tap).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
        Err(source) => Err(HostNetError::Netlink {
            tap: tap.to_string(),
            what: "deleting the link",
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_fit_ifnamsiz_and_differ() {
        assert_eq!(tap_name("web-1"), "sv-web-1");
        assert_eq!(tap_name("abcdefghijkl"), "sv-abcdefghijkl");
        let long = tap_name("a-very-long-sliver-name-0001");
        assert_eq!(long.len(), 14);
        assert_ne!(long, tap_name("a-very-long-sliver-name-0002"));
        for name in ["web-1", "abcdefghijkl", "a-very-long-sliver-name-0001"] {
            assert!(is_sliver_tap_name(&tap_name(name)), "{name}");
        }
        for other in [
            "sv",
            "sv-",
            "eth0",
            "svABCDEF012345",
            "sv0123",
            "sv-UPPER",
            "sv-a.b",
        ] {
            assert!(!is_sliver_tap_name(other), "{other}");
        }
    }
}
