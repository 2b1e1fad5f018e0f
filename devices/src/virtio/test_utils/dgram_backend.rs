//! A host side for a virtio-net device made of a datagram socket pair.

use std::os::unix::net::UnixDatagram;

use crate::virtio::net::NetBackend;

/// A backend made of a datagram socket pair: the test holds the peer end and sees exactly
/// the frames (with virtio header) the device writes, and can inject frames for RX.
#[derive(Debug)]
pub struct DgramBackend {
    sock: UnixDatagram,
    /// The MTU it reports, as a TAP would.
    pub mtu: Option<usize>,
}

impl DgramBackend {
    /// The backend (no MTU) and the test's peer socket (both non-blocking).
    pub fn pair() -> (Self, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().expect("socketpair");
        a.set_nonblocking(true).expect("nonblocking");
        b.set_nonblocking(true).expect("nonblocking");
        (Self { sock: a, mtu: None }, b)
    }
}

impl std::os::fd::AsRawFd for DgramBackend {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for DgramBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.recv(buf)
    }

    fn mtu(&self) -> std::io::Result<Option<usize>> {
        Ok(self.mtu)
    }
}
