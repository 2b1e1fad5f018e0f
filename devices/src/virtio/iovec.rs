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

/// Make `iovs` one iovec over `buf`: copy the bytes of `iovs[1..]` into `buf` after the
/// `iovs[0]` bytes already there (`iovs[0]` must describe the start of `buf`), for a
/// `len`-byte whole. Returns `false`, changing nothing, when `buf` is shorter than `len` or
/// `iovs` do not come to `len` bytes.
///
/// # Safety
/// Every iovec after the first must describe memory valid for reads that does not overlap
/// `buf`.
#[inline]
pub(crate) unsafe fn flatten(buf: &mut [u8], iovs: &mut IovecBuf, len: usize) -> bool {
    let Some((first, rest)) = iovs.0.split_first() else {
        return false;
    };
    let total = rest.iter().fold(first.iov_len, |t, iov| t + iov.iov_len);
    if len > buf.len() || total != len || first.iov_base.cast::<u8>() != buf.as_mut_ptr() {
        return false;
    }
    let mut at = first.iov_len;
    for iov in rest {
        // SAFETY: `iov` is readable for `iov_len` bytes and does not overlap `buf` (the
        // caller's guarantee); `at + iov_len <= total == len <= buf.len()`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                iov.iov_base.cast::<u8>(),
                buf.as_mut_ptr().add(at),
                iov.iov_len,
            );
        }
        at += iov.iov_len;
    }
    iovs.0.truncate(1);
    iovs.0[0].iov_len = len;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iov(buf: &mut [u8]) -> libc::iovec {
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        }
    }

    #[test]
    fn flatten_copies_the_rest_after_the_first_bytes() {
        let mut buf = [0u8; 16];
        buf[..3].copy_from_slice(b"abc");
        let (mut one, mut two) = (*b"defg", *b"hi");
        let first = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 3,
        };
        let mut iovs = IovecBuf(vec![first, iov(&mut one), iov(&mut two)]);
        // SAFETY: the iovecs after the first are `one` and `two`, alive and apart from `buf`.
        assert!(unsafe { flatten(&mut buf, &mut iovs, 9) });
        assert_eq!(&buf[..9], b"abcdefghi");
        assert_eq!(iovs.0.len(), 1);
        assert_eq!(iovs.0[0].iov_len, 9);
        assert_eq!(iovs.0[0].iov_base, buf.as_mut_ptr().cast());
    }

    #[test]
    fn flatten_leaves_what_does_not_fit_or_add_up() {
        let mut buf = [0u8; 4];
        let mut rest = *b"xyz";
        let first = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: 2,
        };
        let mut iovs = IovecBuf(vec![first, iov(&mut rest)]);
        // SAFETY: as above.
        unsafe {
            assert!(!flatten(&mut buf, &mut iovs, 5), "5 bytes do not fit in 4");
            assert!(!flatten(&mut buf, &mut iovs, 4), "the iovecs hold 5, not 4");
        }
        assert_eq!(iovs.0.len(), 2);
        assert_eq!(buf, [0u8; 4]);
        let mut other = [0u8; 8];
        // SAFETY: as above.
        let flattened = unsafe { flatten(&mut other, &mut iovs, 5) };
        assert!(!flattened, "the first iovec is not `other`'s start");
    }
}
