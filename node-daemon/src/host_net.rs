//! A sliver's host side of the network: a persistent TAP (created with `TUNSETPERSIST`), its
//! host address and link state set with rtnetlink, and its removal on delete.

use std::net::{IpAddr, Ipv4Addr};

use devices::virtio::net::Tap;
use futures_util::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec};

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
/// 48-bit hash of the name.
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

/// Create (or keep) the persistent TAP `tap`, give it `host/prefix` and bring it up.
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
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(netlink("setting the link up"))
}

/// Remove the TAP `tap` (absent is fine).
pub async fn remove_tap(handle: &Handle, tap: &str) -> Result<(), HostNetError> {
    let Some(index) = link_index(handle, tap).await? else {
        return Ok(());
    };
    handle
        .link()
        .del(index)
        .execute()
        .await
        .map_err(|source| HostNetError::Netlink {
            tap: tap.to_string(),
            what: "deleting the link",
            source,
        })
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
    }
}
