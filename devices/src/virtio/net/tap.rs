//! A TAP device (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking) as the backend.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
};

use super::backend::NetBackend;
use super::features::OFFLOAD_FEATURES;
use crate::virtio::feature;

/// ioctl numbers and flags from `<linux/if_tun.h>` (x86-64 encoding).
mod sys {
    pub const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    pub const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
    pub const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
    pub const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    /// From `<linux/sockios.h>`.
    pub const SIOCGIFMTU: libc::c_ulong = 0x8921;
    pub const IFF_TAP: libc::c_short = 0x0002;
    pub const IFF_NO_PI: libc::c_short = 0x1000;
    pub const IFF_VNET_HDR: libc::c_short = 0x4000;
    pub const IFNAMSIZ: usize = 16;
    /// TUNSETOFFLOAD flags: partial checksums, TSO for IPv4 and IPv6, TSO with ECN.
    pub const TUN_F_CSUM: libc::c_uint = 0x01;
    pub const TUN_F_TSO4: libc::c_uint = 0x02;
    pub const TUN_F_TSO6: libc::c_uint = 0x04;
    pub const TUN_F_TSO_ECN: libc::c_uint = 0x08;
    /// `VNET_HDR_LEN` as `TUNSETVNETHDRSZ` takes it (an `int`).
    pub const VNET_HDR_SZ: libc::c_int = 12;

    /// `struct ifreq` with the `ifr_flags` member of its union.
    #[repr(C)]
    pub struct IfReqFlags {
        pub name: [u8; IFNAMSIZ],
        pub flags: libc::c_short,
        pub pad: [u8; 22],
    }

    /// `struct ifreq` with the `ifr_mtu` member of its union.
    #[repr(C)]
    pub struct IfReqMtu {
        pub name: [u8; IFNAMSIZ],
        pub mtu: libc::c_int,
        pub pad: [u8; 20],
    }
}

/// Errors opening a TAP device; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Name empty, too long or with characters Linux refuses.
    #[error("tap={0:?}: an interface name is 1 to 15 characters without '/', ':' or whitespace")]
    BadName(String),
    /// /dev/net/tun could not be opened.
    #[error("tap={name}: opening /dev/net/tun: {source}")]
    OpenTun {
        /// Device name.
        name: String,
        /// Why.
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("tap={name}: {what}: {source}")]
    Ioctl {
        /// Device name.
        name: String,
        /// Which ioctl.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

/// An open TAP queue.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// A dead unix socket, for `SIOCGIFMTU` in the TAP's network namespace (opened with the
    /// TAP, so that asking later needs no new descriptor).
    query: OwnedFd,
    /// TUNSETOFFLOAD took every flag of [`OFFLOAD_FEATURES`]' GUEST_* features.
    offloads: bool,
}

/// The TUNSETOFFLOAD flags for the driver's `acked` features: what the TAP may then hand
/// the device (Linux `drivers/net/tun.c`, `set_offload`).
fn tun_offload_flags(acked: u64) -> libc::c_uint {
    [
        (VIRTIO_NET_F_GUEST_CSUM, sys::TUN_F_CSUM),
        (VIRTIO_NET_F_GUEST_TSO4, sys::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, sys::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_ECN, sys::TUN_F_TSO_ECN),
    ]
    .into_iter()
    .filter(|&(bit, _)| acked & feature(bit) != 0)
    .fold(0, |flags, (_, f)| flags | f)
}

/// `TUNSETOFFLOAD` with `flags` on TAP `fd`.
fn set_offload(fd: RawFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its flags by value.
    let rc = unsafe { libc::ioctl(fd, sys::TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < sys::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

impl Tap {
    /// Open (creating if needed, as root) the TAP device `name` in this network namespace.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let mut req = sys::IfReqFlags {
            name: [0; sys::IFNAMSIZ],
            flags: sys::IFF_TAP | sys::IFF_NO_PI | sys::IFF_VNET_HDR,
            pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let ioctl_err = |what| {
            let name = name.to_string();
            move |source| TapError::Ioctl { name, what, source }
        };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is laid out as; the
        // fd is a freshly opened /dev/net/tun.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), sys::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(ioctl_err("TUNSETIFF")(io::Error::last_os_error()));
        }
        Self::from_fd(name, file.into())
    }

    /// The TAP device `name` through `fd`, a /dev/net/tun fd already attached to it
    /// (TUNSETIFF with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, non-blocking), as a supervisor
    /// that holds CAP_NET_ADMIN passes it: from here on nothing needs privilege.
    pub fn from_fd(name: &str, fd: OwnedFd) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = std::fs::File::from(fd);
        let ioctl_err = |what| {
            let name = name.to_string();
            move |source| TapError::Ioctl { name, what, source }
        };
        let hdr_len = sys::VNET_HDR_SZ;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer we pass.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), sys::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(ioctl_err("TUNSETVNETHDRSZ")(io::Error::last_os_error()));
        }
        // Whether the TAP takes every offload the device may offer; then none until a driver
        // negotiates them: the host stack hands us plain, checksummed frames.
        let offloads = set_offload(file.as_raw_fd(), tun_offload_flags(OFFLOAD_FEATURES)).is_ok();
        set_offload(file.as_raw_fd(), 0).map_err(ioctl_err("TUNSETOFFLOAD"))?;
        // The MTU is asked through a socket of this network namespace (SIOCGIFMTU resolves
        // the name in the socket's). One end of a unix socketpair whose other end is closed
        // at once: unlike an AF_INET socket it can send nowhere, so a VMM jailed in another
        // namespace holds no way to send into this one (see docs/threat-model.md).
        let mut pair = [0; 2];
        // SAFETY: socketpair(2) writes two fds into `pair`.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        };
        if rc < 0 {
            return Err(ioctl_err("socketpair for SIOCGIFMTU")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: both fds are fresh and nobody else owns them; the peer is closed here.
        let query = unsafe {
            libc::close(pair[1]);
            OwnedFd::from_raw_fd(pair[0])
        };
        Ok(Self {
            file,
            name: name.to_string(),
            query,
            offloads,
        })
    }

    /// The interface's MTU now (`SIOCGIFMTU`), in bytes of IP packet.
    pub fn mtu(&self) -> io::Result<usize> {
        let mut req = sys::IfReqMtu {
            name: [0; sys::IFNAMSIZ],
            mtu: 0,
            pad: [0; 20],
        };
        req.name[..self.name.len()].copy_from_slice(self.name.as_bytes());
        // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into a `struct ifreq`,
        // which `req` is laid out as; the fd is our own socket.
        let rc = unsafe { libc::ioctl(self.query.as_raw_fd(), sys::SIOCGIFMTU, &mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        usize::try_from(req.mtu).map_err(|_| io::Error::other("negative MTU"))
    }

    /// Every descriptor it holds: the TAP's and the socket its MTU is asked through.
    pub fn raw_fds(&self) -> [RawFd; 2] {
        [self.file.as_raw_fd(), self.query.as_raw_fd()]
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keep the interface after this fd closes (or let it go with the last fd).
    pub fn set_persistent(&self, persistent: bool) -> Result<(), TapError> {
        // SAFETY: TUNSETPERSIST takes its flag by value on a TUNSETIFF'd fd.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                sys::TUNSETPERSIST,
                libc::c_ulong::from(persistent),
            )
        };
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                what: "TUNSETPERSIST",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: read(2) writes at most `buf.len()` bytes into `buf`, which is ours
        // (a raw system call: see `backend.rs`).
        super::backend::byte_count(unsafe {
            libc::syscall(
                libc::SYS_read,
                super::backend::long(self.file.as_raw_fd()),
                buf.as_mut_ptr(),
                buf.len(),
            )
        })
    }

    fn mtu(&self) -> io::Result<Option<usize>> {
        Tap::mtu(self).map(Some)
    }

    fn offload_features(&self) -> u64 {
        if self.offloads {
            OFFLOAD_FEATURES
        } else {
            0
        }
    }

    fn set_guest_offloads(&mut self, acked: u64) -> io::Result<()> {
        set_offload(self.file.as_raw_fd(), tun_offload_flags(acked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated_before_any_syscall() {
        for bad in ["", "a/b", "x:1", "has space", "0123456789abcdef", ".."] {
            assert!(
                matches!(Tap::open(bad), Err(TapError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(valid_name("slv-0"));
        assert_eq!(
            usize::try_from(sys::VNET_HDR_SZ).ok(),
            Some(crate::virtio::net::VNET_HDR_LEN)
        );
        assert!(valid_name("0123456789abcde"));
    }

    /// The TUNSETOFFLOAD flags as `<linux/if_tun.h>` defines them, when the header is here.
    #[test]
    fn offload_flags_match_if_tun_h() {
        let Ok(h) = std::fs::read_to_string("/usr/include/linux/if_tun.h") else {
            eprintln!("skipped: no /usr/include/linux/if_tun.h (linux-libc-dev) here");
            return;
        };
        let define = |name: &str| {
            h.lines()
                .find_map(|l| {
                    let mut w = l.split_whitespace();
                    (w.next() == Some("#define") && w.next() == Some(name)).then(|| w.next())?
                })
                .and_then(|v| u32::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        };
        assert_eq!(define("TUN_F_CSUM"), Some(sys::TUN_F_CSUM));
        assert_eq!(define("TUN_F_TSO4"), Some(sys::TUN_F_TSO4));
        assert_eq!(define("TUN_F_TSO6"), Some(sys::TUN_F_TSO6));
        assert_eq!(define("TUN_F_TSO_ECN"), Some(sys::TUN_F_TSO_ECN));
        // GUEST_CSUM 1, GUEST_TSO4 7, GUEST_TSO6 8, GUEST_ECN 9 (virtio 1.2 section 5.1.3).
        assert_eq!(tun_offload_flags(1 << 1), sys::TUN_F_CSUM);
        assert_eq!(
            tun_offload_flags((1 << 1) | (1 << 7) | (1 << 8) | (1 << 9)),
            0x0f
        );
        assert_eq!(
            tun_offload_flags(OFFLOAD_FEATURES & !((1 << 7) | (1 << 8) | (1 << 9) | 2)),
            0
        );
    }
}
