//! Copying frames out of and into descriptor chains, refusing malformed chains.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory, GuestMemoryBackend};

pub(crate) use crate::virtio::iovec::IovecBuf;

/// Why a chain could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor pointed the wrong way (writable in TX, read-only in RX).
    #[error("descriptor with the wrong direction")]
    WrongDirection,
    /// A buffer lies outside guest memory.
    #[error("descriptor outside guest memory")]
    BadAddress,
    /// The chain ended early: a loop, a `next` past the table, or a bad indirect table.
    #[error("chain is broken (loop, bad next index or bad indirect table)")]
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

/// Walk a chain: check each descriptor's direction, map it into host memory, and describe it
/// with iovecs. The chain's first `head.len()` bytes are described by `iovs[0]`, which points
/// at `head` (and, when the device reads, they are copied there now); the rest point straight
/// into guest memory. One slot of `iovs` is left free. Returns the chain's total length and
/// how many of its bytes `head` covers.
fn map_chain<M>(
    chain: &mut DescriptorChain<M>,
    access: Access,
    head: &mut [u8],
    iovs: &mut Vec<libc::iovec>,
    max_len: usize,
) -> Result<(usize, usize), ChainError>
where
    M: Deref,
    M::Target: GuestMemoryBackend,
{
    iovs.clear();
    iovs.push(libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: 0,
    });
    let mut total = 0usize;
    let mut more = true;
    while let Some(desc) = chain.next() {
        more = desc.has_next();
        if desc.is_write_only() != (access == Access::DeviceWrites) {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len() as usize;
        let start = total;
        total = total
            .checked_add(len)
            .filter(|&t| t <= max_len)
            .ok_or(ChainError::TooLong)?;
        if len == 0 {
            continue;
        }
        let slice = chain
            .memory()
            .get_slice(desc.addr(), len)
            .map_err(|_| ChainError::BadAddress)?;
        let in_head = head.len().saturating_sub(start).min(len);
        if in_head > 0 && access == Access::DeviceReads {
            slice.copy_to(&mut head[start..start + in_head]);
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
    if more {
        return Err(ChainError::Broken);
    }
    let head_len = head.len().min(total);
    iovs[0].iov_len = head_len;
    Ok((total, head_len))
}

/// Gather a TX chain: copy its first `head.len()` bytes into `head` (what checks and stages
/// look at, and what is sent: the guest cannot change them after the checks), and describe
/// the rest with iovecs pointing into guest memory. `iovs[0]` describes `head`.
pub fn gather_iov<M>(
    chain: &mut DescriptorChain<M>,
    head: &mut [u8],
    iovs: &mut IovecBuf,
    max_len: usize,
) -> Result<Gathered, ChainError>
where
    M: Deref,
    M::Target: GuestMemoryBackend,
{
    let (len, head_len) = map_chain(chain, Access::DeviceReads, head, &mut iovs.0, max_len)?;
    Ok(Gathered { len, head_len })
}

/// iovecs to receive a frame into an RX chain: `iovs[0]` is `head` (the device's copy of
/// the frame's first bytes, which the caller later writes into the chain's start with
/// [`scatter`]), then the chain's writable buffers after those bytes, then `spare`, which
/// only a frame longer than the chain reaches. Returns the chain's capacity in bytes.
pub fn rx_iovs<M>(
    chain: &mut DescriptorChain<M>,
    head: &mut [u8],
    spare: &mut [u8],
    iovs: &mut IovecBuf,
) -> Result<usize, ChainError>
where
    M: Deref,
    M::Target: GuestMemoryBackend,
{
    let (capacity, _) = map_chain(chain, Access::DeviceWrites, head, &mut iovs.0, usize::MAX)?;
    iovs.0.push(libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    });
    Ok(capacity)
}

/// Scatter `frame` into the writable buffers of an RX chain; the whole frame must fit.
pub fn scatter<M>(chain: &mut DescriptorChain<M>, frame: &[u8]) -> Result<(), ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut done = 0usize;
    let mut more = true;
    while let Some(desc) = chain.next() {
        more = desc.has_next();
        if !desc.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        if done == frame.len() {
            // Frame complete; keep walking only to validate the rest of the chain.
            continue;
        }
        let n = (desc.len() as usize).min(frame.len() - done);
        chain
            .memory()
            .write_slice(&frame[done..done + n], desc.addr())
            .map_err(|_| ChainError::BadAddress)?;
        done += n;
    }
    if more {
        return Err(ChainError::Broken);
    }
    if done < frame.len() {
        return Err(ChainError::TooSmall);
    }
    Ok(())
}
