//! Where frames go to and come from on the host side.

use std::io;
use std::os::fd::AsRawFd;

/// A datagram-style, non-blocking frame backend: each read or write is one frame with its
/// `virtio_net_hdr_v1` in front. `WouldBlock` means "try again when the fd is ready".
pub trait NetBackend: AsRawFd + Send {
    /// Read one frame into `buf`; returns its length.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Write one frame.
    fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize>;
}
