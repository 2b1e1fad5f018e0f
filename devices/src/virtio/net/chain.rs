//! Copying frames out of and into descriptor chains, refusing malformed chains.

use crate::virtio::iovec::scatter;
pub(crate) use crate::virtio::iovec::IovecBuf;
use crate::virtio::split_ring::SplitRing;

/// Why a chain could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor pointed the wrong way (writable in TX, read-only in RX).
    #[error("descriptor with the wrong direction")]
    WrongDirection,
    /// A buffer lies outside guest memory.
    #[error("descriptor outside guest memory")]
    BadAddress,
    /// The chain cannot be followed: a loop, a `next` past the table, or an indirect
    /// descriptor (VIRTIO_F_INDIRECT_DESC is not offered).
    #[error("chain is broken (loop, bad next index or indirect descriptor)")]
    Broken,
    /// More data than the largest frame, or more descriptors than a chain may have (TX).
    #[error("chain is longer than the largest frame")]
    TooLong,
    /// Less room than the frame needs (RX).
    #[error("chain is too small for the frame")]
    TooSmall,
}

/// A TX frame as gathered from a chain: its first bytes copied into the device's own buffer,
/// the rest described by iovecs into guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gathered {
    /// Total length (virtio header + frame).
    pub len: usize,
    /// How many leading bytes were copied into the head buffer.
    pub head_len: usize,
}

/// Who writes a chain's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// TX: the device reads, every descriptor must be device-readable.
    DeviceReads,
    /// RX: the device writes, every descriptor must be device-writable.
    DeviceWrites,
}

/// Guest buffers, in frame order, that hold an RX frame's first bytes, as host addresses
/// ([`IovecBuf`]: valid while the ring that mapped them lives, for the frame being
/// received): the device writes its own copy of those bytes there last ([`write_head`]).
pub(crate) type HeadSpans = IovecBuf;

/// Walk chain `index` of `ring`: check each descriptor's direction, map it into host memory,
/// and describe it with iovecs appended to `iovs`, its bytes counted from frame offset
/// `start` (the bytes of the chains mapped before it for the same frame). Bytes at frame
/// offsets below `head.len()` are not described: `iovs[0]` covers them in `head`; when the
/// device reads they are copied there now, when it writes their guest spans go to `spans`.
/// The rest point straight into guest memory. One slot of `iovs` is left free. Returns the
/// frame offset after the chain.
#[inline(always)]
fn map_chain(
    ring: &SplitRing,
    index: u16,
    access: Access,
    head: &mut [u8],
    iovs: &mut Vec<libc::iovec>,
    (start, max_len): (usize, usize),
    mut spans: Option<&mut HeadSpans>,
) -> Result<usize, ChainError> {
    let mut total = start;
    for desc in ring.descriptors(index) {
        let desc = desc.map_err(|_| ChainError::Broken)?;
        if desc.is_write_only() != (access == Access::DeviceWrites) {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len as usize;
        let at = total;
        total = total
            .checked_add(len)
            .filter(|&t| t <= max_len)
            .ok_or(ChainError::TooLong)?;
        if len == 0 {
            continue;
        }
        let slice = ring.buffer(desc.addr, len).ok_or(ChainError::BadAddress)?;
        let in_head = head.len().saturating_sub(at).min(len);
        if in_head > 0 {
            match (access, spans.as_deref_mut()) {
                (Access::DeviceReads, _) => {
                    slice.copy_to(&mut head[at..at + in_head]);
                }
                (Access::DeviceWrites, Some(spans)) => spans.0.push(libc::iovec {
                    iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                    iov_len: in_head,
                }),
                (Access::DeviceWrites, None) => {}
            }
        }
        if len > in_head {
            if iovs.len() + 1 >= iovs.capacity() {
                return Err(ChainError::TooLong);
            }
            let rest = slice
                .subslice(in_head, len - in_head)
                .map_err(|_| ChainError::BadAddress)?;
            iovs.push(libc::iovec {
                iov_base: rest.ptr_guard_mut().as_ptr().cast(),
                iov_len: len - in_head,
            });
        }
    }
    Ok(total)
}

/// Start describing a frame: `iovs[0]` is `head`, its length set by [`finish_head`].
fn begin(head: &mut [u8], iovs: &mut Vec<libc::iovec>) {
    iovs.clear();
    iovs.push(libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: 0,
    });
}

/// `iovs[0]` covers as much of `head` as the frame's `total` bytes reach; returns that.
fn finish_head(head_cap: usize, iovs: &mut [libc::iovec], total: usize) -> usize {
    let head_len = head_cap.min(total);
    if let Some(first) = iovs.first_mut() {
        first.iov_len = head_len;
    }
    head_len
}

/// Gather TX chain `index` of `ring`: copy its first `head.len()` bytes into `head` (what checks and stages
/// look at, and what is sent: the guest cannot change them after the checks), and describe
/// the rest with iovecs pointing into guest memory. `iovs[0]` describes `head`.
pub fn gather_iov(
    ring: &SplitRing,
    index: u16,
    head: &mut [u8],
    iovs: &mut IovecBuf,
    max_len: usize,
) -> Result<Gathered, ChainError> {
    begin(head, &mut iovs.0);
    let len = map_chain(
        ring,
        index,
        Access::DeviceReads,
        head,
        &mut iovs.0,
        (0, max_len),
        None,
    )?;
    let head_len = finish_head(head.len(), &mut iovs.0, len);
    Ok(Gathered { len, head_len })
}

/// Start the iovecs to receive a frame into RX chains: `iovs[0]` is `head` (where `readv`
/// puts the frame's first bytes; the device writes them, as its stages left them, into the
/// chains' first bytes last: [`write_head`]); `spans` is emptied.
#[inline]
pub fn rx_begin(head: &mut [u8], iovs: &mut IovecBuf, spans: &mut HeadSpans) {
    begin(head, &mut iovs.0);
    spans.0.clear();
}

/// Append the writable buffers of RX chain `index` of `ring` after the `capacity` bytes described so far (the
/// guest spans of the first `head.len()` bytes go to `spans`). Returns the capacity with it.
/// On error `iovs` and `spans` may hold part of the chain: start again with [`rx_begin`].
#[inline]
pub fn rx_append(
    ring: &SplitRing,
    index: u16,
    head: &mut [u8],
    iovs: &mut IovecBuf,
    spans: &mut HeadSpans,
    capacity: usize,
) -> Result<usize, ChainError> {
    let limit = (capacity, usize::MAX);
    map_chain(
        ring,
        index,
        Access::DeviceWrites,
        head,
        &mut iovs.0,
        limit,
        Some(spans),
    )
}

/// End the RX iovecs for chains of `capacity` bytes: `spare` goes last, so that only a
/// frame longer than the chains reaches it.
#[inline]
pub fn rx_finish(head_cap: usize, iovs: &mut IovecBuf, spare: &mut [u8], capacity: usize) {
    finish_head(head_cap, &mut iovs.0, capacity);
    iovs.0.push(libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    });
}

/// Write `head` (the device's copy of a received frame's first bytes) into the guest
/// buffers `spans` ([`rx_append`] recorded them); they must hold all of it.
///
/// # Errors
/// [`ChainError::TooSmall`] when they do not (nothing is then left out of them).
///
/// # Safety
/// `spans` must be as [`rx_append`] left them, with the ring that mapped them still alive,
/// and must not overlap `head`.
#[inline]
pub unsafe fn write_head(spans: &HeadSpans, head: &[u8]) -> Result<(), ChainError> {
    // SAFETY: the caller's guarantee: the spans are guest memory the ring keeps mapped,
    // writable (RX descriptors), apart from `head`.
    let done = unsafe { scatter(head, spans.as_slice()) };
    if done < head.len() {
        return Err(ChainError::TooSmall);
    }
    Ok(())
}
