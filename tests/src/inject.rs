//! Frames sent into a TAP from the host side (an AF_PACKET socket bound to it): what the
//! guest behind the TAP receives.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// An AF_PACKET socket on one interface.
#[derive(Debug)]
pub struct Injector {
    fd: OwnedFd,
}

impl Injector {
    /// A socket on interface `ifname` of the calling thread's network namespace.
    pub fn open(ifname: &str) -> Self {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
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
