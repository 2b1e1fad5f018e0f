//! How the receive queue reads one frame from the backend: for small frames, `read(2)` into a
//! buffer of the device's own and copies into the guest's; for large ones, `readv(2)` straight
//! into the guest's buffers.
//!
//! Both leave the frame's first bytes in the device's head buffer (what the stages read; the
//! guest cannot change it under them) and the rest in the guest's chains. `readv` with its
//! head, guest and spare iovecs costs ~110–130 ns a frame more than `read` into one buffer
//! on the test hosts (`net_path 1000 rx-raw` vs `rx-raw-readv`, docs/benchmarks.md), more
//! than copying a frame of up to [`COPY_MAX`] bytes; for a 64 KiB GSO frame the copy would
//! cost microseconds. The size of the next frame is not known before reading it, so the
//! queue goes by the last one: frames of one flow tend to be alike.

use std::io;

use super::backend::NetBackend;
use super::chain::IovecBuf;
use super::FRAME_BUF_LEN;

/// Frames up to this many bytes (virtio header included) are read into the device's buffer
/// and copied: below it, one copy costs less than `readv`'s iovecs.
pub(super) const COPY_MAX: usize = 2048;

/// The receive queue's frame reading.
pub(super) struct RxRead {
    /// The device's frame buffer: the largest frame and one byte more (so that a frame longer
    /// than the guest's chains is seen whole, and refused). Made at the first copied read.
    buffer: Option<Box<[u8]>>,
    /// The last frame was at most [`COPY_MAX`] bytes: read the next into `buffer`.
    copy_next: bool,
}

impl RxRead {
    pub(super) fn new() -> Self {
        Self {
            buffer: None,
            copy_next: true,
        }
    }

    /// Read one frame from `backend`: its first `head.len()` bytes (at most) into `head`,
    /// the rest into the guest buffers `iovs[1..]` (`iovs[0]` describes `head`, the last
    /// iovec is a one-byte spare), which hold `capacity` bytes in all with `head`'s. Returns
    /// the frame's length. A frame longer than `capacity`, or than [`FRAME_BUF_LEN`], may be
    /// cut short and is not whole in the guest buffers: its length is then more than
    /// `capacity.min(FRAME_BUF_LEN)` (by one, at least), and the caller refuses it.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for writes for the whole call, and none of
    /// `iovs[1..]` may overlap `head` or this value.
    pub(super) unsafe fn read<B: NetBackend>(
        &mut self,
        backend: &mut B,
        head: &mut [u8],
        iovs: &IovecBuf,
        capacity: usize,
    ) -> io::Result<usize> {
        let iovs = iovs.as_slice();
        if !self.copy_next {
            // SAFETY: the caller's guarantee.
            let n = unsafe { backend.read_iov(iovs) }?;
            self.copy_next = n <= COPY_MAX;
            return Ok(n);
        }
        let buffer = self
            .buffer
            .get_or_insert_with(|| vec![0u8; FRAME_BUF_LEN + 1].into_boxed_slice());
        let n = backend.read_frame(buffer)?;
        self.copy_next = n <= COPY_MAX;
        let head_len = n.min(head.len());
        head[..head_len].copy_from_slice(&buffer[..head_len]);
        if n <= capacity.min(FRAME_BUF_LEN) {
            let guest = &iovs[1..iovs.len().saturating_sub(1)];
            let in_head = iovs.first().map_or(0, |iov| iov.iov_len);
            // SAFETY: the caller's guarantee: each of `guest` is writable and apart from
            // `buffer`.
            unsafe { scatter(&buffer[in_head.min(n)..n], guest) };
        }
        Ok(n)
    }
}

/// Copy `bytes` over the buffers `iovs` in order, as far as they go.
///
/// # Safety
/// Every iovec must describe memory valid for writes, apart from `bytes`.
unsafe fn scatter(mut bytes: &[u8], iovs: &[libc::iovec]) {
    for iov in iovs {
        if bytes.is_empty() {
            break;
        }
        let n = iov.iov_len.min(bytes.len());
        // SAFETY: `iov` is writable for `iov_len >= n` bytes and does not overlap `bytes`
        // (the caller's guarantee).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), iov.iov_base.cast::<u8>(), n) };
        bytes = &bytes[n..];
    }
}
