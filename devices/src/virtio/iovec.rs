//! iovecs describing guest buffers for one `readv`/`writev`/`preadv`/`pwritev`, and copying
//! bytes over them.

/// iovecs for one request or frame. Holds raw pointers into guest memory that are valid only
/// during the device call that filled it; nothing uses them but the vectored I/O and the
/// copies ([`scatter`]) in that call.
#[derive(Debug)]
pub(crate) struct IovecBuf(pub(crate) Vec<libc::iovec>);

// SAFETY: the pointers are plain addresses, filled and consumed within one call on the thread
// that owns the device; between calls the vector is only cleared.
unsafe impl Send for IovecBuf {}

impl IovecBuf {
    /// Room for `descriptors` iovecs and two more (a device's own head buffer, a spare): the
    /// vector never reallocates on the I/O path.
    pub(crate) fn with_capacity(descriptors: usize) -> Self {
        Self(Vec::with_capacity(descriptors + 2))
    }

    /// The iovecs filled last.
    pub(crate) fn as_slice(&self) -> &[libc::iovec] {
        &self.0
    }
}

/// Copy `bytes` over the buffers `iovs` in order, as far as they go; returns how many were
/// copied.
///
/// # Safety
/// Every iovec must describe memory valid for writes, apart from `bytes`.
#[inline]
pub(crate) unsafe fn scatter(bytes: &[u8], iovs: &[libc::iovec]) -> usize {
    let mut done = 0usize;
    for iov in iovs {
        if done == bytes.len() {
            break;
        }
        let n = iov.iov_len.min(bytes.len() - done);
        // SAFETY: `iov` is writable for `iov_len >= n` bytes and does not overlap `bytes`
        // (the caller's guarantee); `done + n <= bytes.len()`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(done), iov.iov_base.cast::<u8>(), n);
        }
        done += n;
    }
    done
}
