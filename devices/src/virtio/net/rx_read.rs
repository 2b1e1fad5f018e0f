//! How the receive queue reads one frame from the backend: for small frames, `read(2)` into a
//! buffer of the device's own, which the stages read and which is copied into the guest's
//! chains once the frame passes; for large ones, `readv(2)` straight into the guest's
//! buffers, with the frame's first bytes in the queue's head buffer.
//!
//! Either way the stages read the frame's first bytes from memory of the device's own (the
//! guest cannot change them under the stages), and those bytes, as the stages left them, are
//! what the guest gets. `readv` with its head, guest and spare iovecs costs ~100–160 ns a
//! frame more than `read` into one buffer on the test hosts (`net_path 1000 rx-raw` vs
//! `rx-raw-readv`, docs/benchmarks.md), more than copying a frame of up to [`COPY_MAX`]
//! bytes; for a 64 KiB GSO frame the copy would cost microseconds. The size of the next frame
//! is not known before reading it, so the queue goes by the last one: frames of one flow tend
//! to be alike.

use std::io;

use super::backend::NetBackend;
use super::chain::{write_head, ChainError, HeadSpans, IovecBuf};
use super::FRAME_BUF_LEN;
use crate::virtio::iovec::scatter;
use crate::virtio::split_ring::SplitRing;

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
    /// The frame read last is in `buffer` (not yet in the guest's chains).
    copied: bool,
}

/// The frame read last, as [`RxRead::frame`] shows it.
pub(super) struct Frame<'a> {
    /// In memory of the device's own: the frame's first `head_len` bytes (its head, which the
    /// stages read and edit), then for a copied frame the rest, not in the guest's chains
    /// yet. [`Frame::deliver`] writes them there.
    bytes: &'a mut [u8],
    /// At most the head buffer's length.
    head_len: usize,
}

impl RxRead {
    pub(super) fn new() -> Self {
        Self {
            buffer: None,
            copy_next: true,
            copied: false,
        }
    }

    /// The next frame will be read whole into the device's buffer (a small one is expected).
    pub(super) fn reads_whole_next(&self) -> bool {
        self.copy_next
    }

    /// The frame read last is whole in the device's buffer (it was read there, and is no
    /// longer than the buffer holds), not yet in the guest's chains.
    pub(super) fn holds_whole(&self, n: usize) -> bool {
        self.copied && n <= FRAME_BUF_LEN
    }

    /// Read one frame from `backend`: into the device's buffer, or with `iovs` (`iovs[0]` the
    /// queue's head buffer, then the guest's buffers, then a one-byte spare) straight into
    /// place. Returns the frame's length; [`RxRead::frame`] then gives its first bytes. A
    /// frame longer than the guest's buffers, or than [`FRAME_BUF_LEN`], may be cut short:
    /// its length is then more than what they hold (by one, at least), and the caller
    /// refuses it.
    ///
    /// # Safety
    /// Every iovec must describe memory valid for writes for the whole call, and none of
    /// `iovs[1..]` may overlap the head buffer or this value.
    pub(super) unsafe fn read<B: NetBackend>(
        &mut self,
        backend: &mut B,
        iovs: &IovecBuf,
    ) -> io::Result<usize> {
        if !self.copy_next {
            self.copied = false;
            // SAFETY: the caller's guarantee.
            let n = unsafe { backend.read_iov(iovs.as_slice()) }?;
            self.copy_next = n <= COPY_MAX;
            return Ok(n);
        }
        let buffer = self
            .buffer
            .get_or_insert_with(|| vec![0u8; FRAME_BUF_LEN + 1].into_boxed_slice());
        let n = backend.read_frame(buffer)?;
        self.copied = true;
        self.copy_next = n <= COPY_MAX;
        Ok(n)
    }

    /// The `n`-byte frame [`RxRead::read`] returned last, `head` being the head buffer its
    /// iovecs named.
    pub(super) fn frame<'a>(&'a mut self, head: &'a mut [u8], n: usize) -> Frame<'a> {
        let head_len = n.min(head.len());
        let bytes = match self.buffer.as_deref_mut() {
            Some(buffer) if self.copied => {
                let len = n.min(buffer.len());
                &mut buffer[..len]
            }
            _ => &mut head[..head_len],
        };
        Frame { bytes, head_len }
    }
}

impl Frame<'_> {
    /// The frame's first bytes (at most the head buffer's length).
    pub(super) fn head(&self) -> &[u8] {
        &self.bytes[..self.head_len]
    }

    /// The frame's first bytes, to edit: what the guest gets.
    pub(super) fn head_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..self.head_len]
    }

    /// Put the frame into the guest's chains: its head over `spans`, and for a copied frame
    /// the rest over the guest buffers `iovs[1..]` (as [`RxRead::read`] took them), all
    /// mapped by `ring`. Where the head's one span runs straight on into the first of those
    /// within one region of guest memory (one descriptor holds both, say), that is one copy.
    ///
    /// # Errors
    /// [`ChainError::TooSmall`] when `spans` cannot hold the head.
    ///
    /// # Safety
    /// `spans` and `iovs` must be as the ring's chains left them for this frame (guest
    /// memory, mapped while the ring lives), with room for the whole frame.
    #[inline]
    pub(super) unsafe fn deliver(
        &self,
        ring: &SplitRing,
        spans: &HeadSpans,
        iovs: &IovecBuf,
    ) -> Result<(), ChainError> {
        let (head, rest) = self.bytes.split_at(self.head_len);
        if !rest.is_empty() {
            let iovs = iovs.as_slice();
            let guest = iovs.get(1..iovs.len().saturating_sub(1)).unwrap_or(&[]);
            if let ([span], [next, ..]) = (spans.as_slice(), guest) {
                let span_end = span.iov_base.cast::<u8>().wrapping_add(span.iov_len);
                if span.iov_len == head.len()
                    && span_end == next.iov_base.cast::<u8>()
                    && next.iov_len >= rest.len()
                    && ring.holds_host_range(span.iov_base.cast(), self.bytes.len())
                {
                    // SAFETY: `span` and `next` are writable guest memory (the caller's
                    // guarantee), one straight after the other in one mapping,
                    // `head.len() + rest.len()` bytes in all; the device's buffer is apart
                    // from guest memory.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            self.bytes.as_ptr(),
                            span.iov_base.cast::<u8>(),
                            self.bytes.len(),
                        );
                    }
                    return Ok(());
                }
            }
            // SAFETY: the caller's guarantee: each of `guest` is writable guest memory, apart
            // from the device's buffer.
            unsafe { scatter(rest, guest) };
        }
        // SAFETY: the caller's guarantee.
        unsafe { write_head(spans, head) }
    }
}
