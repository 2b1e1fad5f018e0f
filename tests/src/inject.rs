//! Frames sent into a TAP from the host side (an AF_PACKET socket bound to it): what the
//! guest behind the TAP receives; and, listening, the frames the host gets from it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `<linux/if_packet.h>`: socket option, and the packet type of a frame the host sent.
pub const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_OUTGOING: u8 = 4;
/// `<linux/if_ether.h>`: every protocol.
const ETH_P_ALL: u16 = 0x0003;

/// An AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    /// A socket on interface `ifname` of the calling thread's network namespace, for
    /// sending.
    pub fn open(ifname: &str) -> Self {
        Self::open_for(ifname, 0)
    }

    /// A socket on interface `ifname` that also receives every frame the interface sends
    /// or receives (`ETH_P_ALL`), each preceded by the 10-byte `struct virtio_net_hdr`
    /// describing it as the kernel holds it (`PACKET_VNET_HDR`, `<linux/if_packet.h>`);
    /// frames sent through it must carry one too.
    pub fn open_with_vnet_hdr(ifname: &str) -> Self {
        let s = Self::open_for(ifname, ETH_P_ALL.to_be());
        let on: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option value on our socket.
        let rc = unsafe {
            libc::setsockopt(
                s.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "PACKET_VNET_HDR: {}",
            std::io::Error::last_os_error()
        );
        s
    }

    /// Let `bytes` of sent frames be in flight before a send blocks (`SO_SNDBUFFORCE`, root):
    /// room to queue a batch of 64 KiB GSO frames for a reader that is not running yet.
    pub fn with_sndbuf(self, bytes: libc::c_int) -> Self {
        // SAFETY: setsockopt with a valid int option value on our socket.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        assert_eq!(rc, 0, "SO_SNDBUFFORCE: {}", std::io::Error::last_os_error());
        self
    }

    /// The next frame that came *in* on the interface (from the TAP's reader), if one is
    /// waiting: its virtio header and frame as one buffer.
    pub fn recv_incoming(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: a zeroed sockaddr_ll is valid; recvfrom writes at most its size.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: receiving into a buffer of the given length on our socket.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut from_len,
                )
            };
            let n = usize::try_from(n).ok()?;
            if from.sll_pkttype != PACKET_OUTGOING {
                buf.truncate(n);
                return Some(buf);
            }
        }
    }

    fn open_for(ifname: &str, protocol: u16) -> Self {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol)) };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a socket we just opened and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).expect("interface name");
        // SAFETY: if_nametoindex reads a NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(ifindex > 0, "no interface {ifname}");
        // SAFETY: a zeroed sockaddr_ll is a valid value; we fill the fields bind needs.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: bind with a properly sized sockaddr_ll on our socket.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
        Self { fd }
    }

    fn send_one(&self, eth: &[u8], flags: libc::c_int) -> isize {
        // SAFETY: sending from a valid buffer of the given length on our socket.
        unsafe { libc::send(self.fd.as_raw_fd(), eth.as_ptr().cast(), eth.len(), flags) }
    }

    /// Send Ethernet frame `eth` `count` times; every send must succeed.
    pub fn send(&self, eth: &[u8], count: usize) {
        for _ in 0..count {
            let n = self.send_one(eth, 0);
            assert_eq!(
                n as usize,
                eth.len(),
                "inject: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Send `eth` once without waiting; a full queue just drops it (as a slow receiver's
    /// frames are dropped).
    pub fn offer(&self, eth: &[u8]) {
        let _ = self.send_one(eth, libc::MSG_DONTWAIT);
    }
}
