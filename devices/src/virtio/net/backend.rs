//! Where frames go to and come from on the host side.

use std::io;
use std::os::fd::AsRawFd;

fn iov_count(iovs: &[libc::iovec]) -> io::Result<libc::c_int> {
    libc::c_int::try_from(iovs.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The result of read/readv/writev as bytes, or the errno.
pub(super) fn byte_count(n: libc::c_long) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// An `int` argument of `syscall(2)`, passed as the full register it is read as.
pub(super) fn long(v: libc::c_int) -> libc::c_long {
    libc::c_long::from(v)
}

// The packet path makes its system calls through `syscall(2)` rather than glibc's wrappers:
// those are pthread cancellation points and, in a process with more than one thread (a VMM
// always has vCPU threads), switch asynchronous cancellation on and off around every call
// (`__pthread_enable_asynccancel`, ~0.5 % of a 64-byte frame's path here). No VMM thread is
// ever cancelled.

/// A datagram-style, non-blocking frame backend: each read or write is one frame with its
/// `virtio_net_hdr_v1` in front. `WouldBlock` means "try again when the fd is ready".
pub trait NetBackend: AsRawFd + Send {
    /// Read one frame into `buf`; returns its length.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Read one frame scattered over `iovs` (one `readv(2)`); a frame longer than the iovecs
    /// is cut short.
    ///
    /// # Safety
    /// Every iovec must describe memory that is valid for writes for the whole call.
    unsafe fn read_iov(&mut self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = iov_count(iovs)?;
        // SAFETY: the caller guarantees the iovecs point to writable memory.
        byte_count(unsafe {
            libc::syscall(
                libc::SYS_readv,
                long(self.as_raw_fd()),
                iovs.as_ptr(),
                long(count),
            )
        })
    }

    /// Write one frame gathered from `iovs` (one `writev(2)`).
    ///
    /// # Safety
    /// Every iovec must describe memory that is valid for reads for the whole call.
    unsafe fn write_iov(&mut self, iovs: &[libc::iovec]) -> io::Result<usize> {
        let count = iov_count(iovs)?;
        // SAFETY: the caller guarantees the iovecs point to readable memory; the kernel only
        // reads through them.
        byte_count(unsafe {
            libc::syscall(
                libc::SYS_writev,
                long(self.as_raw_fd()),
                iovs.as_ptr(),
                long(count),
            )
        })
    }

    /// Whether a frame is waiting to be read (a zero-timeout `poll(2)`).
    fn readable(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout; the kernel only writes `revents`.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// The offload features (a subset of [`OFFLOAD_FEATURES`]) whose frames this backend
    /// carries: partly checksummed and GSO frames with their virtio header, both ways. None
    /// by default.
    ///
    /// [`OFFLOAD_FEATURES`]: super::features::OFFLOAD_FEATURES
    fn offload_features(&self) -> u64 {
        0
    }

    /// Hand the device only frames whose virtio header uses the driver's `acked` features
    /// (its GUEST_CSUM/GUEST_TSO4/6/GUEST_ECN; 0 at reset). Nothing to do by default.
    ///
    /// # Errors
    /// The backend refused (the driver then gets plain frames only, if any).
    fn set_guest_offloads(&mut self, _acked: u64) -> io::Result<()> {
        Ok(())
    }

    /// The host link's MTU (bytes of IP packet), asked when the driver activates the device:
    /// the TX frame checks refuse longer frames (plus the Ethernet header). `None`: no limit
    /// but the device's own [`MAX_FRAME_LEN`](super::MAX_FRAME_LEN).
    ///
    /// # Errors
    /// The query failed (the device then applies only its own limit and logs why).
    fn mtu(&self) -> io::Result<Option<usize>> {
        Ok(None)
    }

    /// Write one frame from a contiguous buffer.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        let iov = libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        };
        // SAFETY: the iovec describes `frame`, which is borrowed for the whole call.
        unsafe { self.write_iov(&[iov]) }
    }
}
