//! Copying frames out of and into descriptor chains, refusing malformed chains.

use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

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
    /// More data than the frame buffer holds (TX).
    #[error("chain is longer than the largest frame")]
    TooLong,
    /// Less room than the frame needs (RX).
    #[error("chain is too small for the frame")]
    TooSmall,
}

/// Gather the readable buffers of a TX chain into `buf`; returns the bytes copied.
pub fn gather<M>(chain: &mut DescriptorChain<M>, buf: &mut [u8]) -> Result<usize, ChainError>
where
    M: Deref,
    M::Target: GuestMemory,
{
    let mut total = 0usize;
    let mut more = true;
    while let Some(desc) = chain.next() {
        more = desc.has_next();
        if desc.is_write_only() {
            return Err(ChainError::WrongDirection);
        }
        let len = desc.len() as usize;
        let dst = buf
            .get_mut(total..total.checked_add(len).ok_or(ChainError::TooLong)?)
            .ok_or(ChainError::TooLong)?;
        chain
            .memory()
            .read_slice(dst, desc.addr())
            .map_err(|_| ChainError::BadAddress)?;
        total += len;
    }
    if more {
        return Err(ChainError::Broken);
    }
    Ok(total)
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
