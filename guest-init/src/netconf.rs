//! The network from `network-config`, set with ioctls (no `ip` binary): each interface's
//! IPv4 address and netmask, up; its routes; the name servers.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use guest_init::nocloud::NetworkConfig;

use crate::say;

fn socket() -> Option<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    // SAFETY: a fresh descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the socket API
    // passes an IPv4 address.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: &OwnedFd, request: libc::c_ulong, arg: *mut libc::c_void, what: &str) -> bool {
    // SAFETY: the caller passes the argument type `request` expects, alive for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) } != 0 {
        say(format_args!("{what}: {}", std::io::Error::last_os_error()));
        return false;
    }
    true
}

/// Bring interface `name` up.
fn up(fd: &OwnedFd, name: &str) -> bool {
    let mut req = ifreq(name);
    if !ioctl(fd, libc::SIOCGIFFLAGS, (&raw mut req).cast(), name) {
        return false;
    }
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(fd, libc::SIOCSIFFLAGS, (&raw mut req).cast(), name)
}

/// Bring `lo` up.
pub fn loopback_up() {
    if let Some(fd) = socket() {
        up(&fd, "lo");
    }
}

/// The interface whose MAC is `mac`, else `fallback`.
fn by_mac(mac: &str, fallback: &str) -> String {
    std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| {
            std::fs::read_to_string(e.path().join("address"))
                .is_ok_and(|a| a.trim().eq_ignore_ascii_case(mac))
        })
        .map_or_else(
            || fallback.to_string(),
            |e| e.file_name().to_string_lossy().into_owned(),
        )
}

/// `10.0.3.2/24` as an address and netmask.
fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Some((addr.parse().ok()?, Ipv4Addr::from(mask)))
}

/// Apply `n`; returns the first address set (where sshd can be reached).
pub fn apply(n: &NetworkConfig) -> Option<Ipv4Addr> {
    let fd = socket()?;
    let mut first = None;
    let mut nameservers = Vec::new();
    for (name, eth) in &n.ethernets {
        let ifname = by_mac(&eth.match_.macaddress, name);
        for cidr in &eth.addresses {
            let Some((addr, mask)) = parse_cidr(cidr) else {
                say(format_args!(
                    "{ifname}: {cidr:?} is not an IPv4 address/prefix"
                ));
                continue;
            };
            let mut req = ifreq(&ifname);
            req.ifr_ifru.ifru_addr = sockaddr(addr);
            let set = ioctl(&fd, libc::SIOCSIFADDR, (&raw mut req).cast(), &ifname) && {
                req.ifr_ifru.ifru_netmask = sockaddr(mask);
                ioctl(&fd, libc::SIOCSIFNETMASK, (&raw mut req).cast(), &ifname)
            };
            if set {
                first.get_or_insert(addr);
                say(format_args!("{ifname}: {cidr}"));
            }
        }
        up(&fd, &ifname);
        for route in &eth.routes {
            let (dst, mask) = match route.to.as_str() {
                "default" | "0.0.0.0/0" => (Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED),
                cidr => match parse_cidr(cidr) {
                    Some(d) => d,
                    None => continue,
                },
            };
            let Ok(via) = route.via.parse::<Ipv4Addr>() else {
                continue;
            };
            // SAFETY: rtentry is plain old data; all-zero is a valid value.
            let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
            rt.rt_dst = sockaddr(dst);
            rt.rt_genmask = sockaddr(mask);
            rt.rt_gateway = sockaddr(via);
            rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
            ioctl(&fd, libc::SIOCADDRT, (&raw mut rt).cast(), "route");
        }
        if let Some(ns) = &eth.nameservers {
            nameservers.extend(ns.addresses.iter().cloned());
        }
    }
    if !nameservers.is_empty() {
        let text: String = nameservers
            .iter()
            .map(|a| format!("nameserver {a}\n"))
            .collect();
        if let Err(e) = std::fs::write("/etc/resolv.conf", text) {
            say(format_args!("writing /etc/resolv.conf: {e}"));
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_become_address_and_netmask() {
        assert_eq!(
            parse_cidr("10.0.3.2/24"),
            Some((Ipv4Addr::new(10, 0, 3, 2), Ipv4Addr::new(255, 255, 255, 0)))
        );
        assert_eq!(
            parse_cidr("10.0.3.2/30").map(|c| c.1),
            Some(Ipv4Addr::new(255, 255, 255, 252))
        );
        assert_eq!(parse_cidr("10.0.3.2/33"), None);
        assert_eq!(parse_cidr("10.0.3.2"), None);
    }
}
