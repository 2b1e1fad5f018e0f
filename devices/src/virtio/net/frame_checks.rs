//! The frame-checks stage: a frame must have a length the device carries (TX: the guest's
//! frame; RX: a frame from the TAP that fits the guest's buffer) and, when a later stage reads
//! its headers (anti-spoofing, audit), headers that parse. A TX frame that fails, and an RX
//! frame whose headers do not parse, are dropped with [`Verdict::DroppedMalformed`]; an RX
//! frame of the wrong length is dropped before the audit (it is the host's, or too big for
//! the guest's buffer, not something the guest did).

use packet::Verdict;

use super::headers::{parse, FrameHeaders};
use super::{MAX_FRAME_LEN, VNET_HDR_LEN};

/// Ethernet header length (destination, source, EtherType).
pub const ETH_HDR_LEN: usize = 14;

/// Why a frame's length is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the virtio header plus an Ethernet header.
    #[error("frame of {0} bytes is shorter than the virtio and Ethernet headers")]
    TooShort(usize),
    /// Longer than we carry.
    #[error("frame of {0} bytes is longer than {max}", max = VNET_HDR_LEN + MAX_FRAME_LEN)]
    TooLong(usize),
    /// RX: shorter than the virtio header.
    #[error("frame of {0} bytes is shorter than the virtio header")]
    Runt(usize),
    /// RX: longer than the guest's buffer.
    #[error("frame of {len} bytes does not fit the guest's {capacity}-byte buffer")]
    OverBuffer {
        /// Bytes read (at most the buffer and one spare byte).
        len: usize,
        /// The guest buffer's size.
        capacity: usize,
    },
}

/// Check the length `len` of virtio header + Ethernet frame as the guest handed it over.
pub fn check_tx_frame(len: usize) -> Result<(), FrameError> {
    match len {
        n if n < VNET_HDR_LEN + ETH_HDR_LEN => Err(FrameError::TooShort(n)),
        n if n > VNET_HDR_LEN + MAX_FRAME_LEN => Err(FrameError::TooLong(n)),
        _ => Ok(()),
    }
}

/// Check the length `n` of virtio header + frame read from the TAP into a guest buffer of
/// `capacity` bytes (a read that reached the spare byte past the buffer is longer).
pub fn check_rx_frame(n: usize, capacity: usize) -> Result<(), FrameError> {
    if n < VNET_HDR_LEN {
        Err(FrameError::Runt(n))
    } else if n > capacity {
        Err(FrameError::OverBuffer { len: n, capacity })
    } else {
        Ok(())
    }
}

/// Read the headers of a frame of `frame_len` bytes (without the virtio header) whose first
/// bytes are `head`, if `wanted` (some later stage reads them); `Ok(None)` when not wanted.
pub fn read_headers(
    head: &[u8],
    frame_len: usize,
    wanted: bool,
) -> Result<Option<FrameHeaders>, Verdict> {
    if !wanted {
        return Ok(None);
    }
    parse(head, frame_len)
        .map(Some)
        .map_err(|_| Verdict::DroppedMalformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::headers::tests::ipv4_frame;

    #[test]
    fn lengths() {
        assert_eq!(check_tx_frame(25), Err(FrameError::TooShort(25)));
        assert!(check_tx_frame(26).is_ok());
        assert!(check_tx_frame(VNET_HDR_LEN + MAX_FRAME_LEN).is_ok());
        assert!(check_tx_frame(VNET_HDR_LEN + MAX_FRAME_LEN + 1).is_err());
        assert_eq!(check_rx_frame(11, 2048), Err(FrameError::Runt(11)));
        assert!(check_rx_frame(12, 2048).is_ok());
        assert!(check_rx_frame(2048, 2048).is_ok());
        assert_eq!(
            check_rx_frame(2049, 2048),
            Err(FrameError::OverBuffer {
                len: 2049,
                capacity: 2048
            })
        );
    }

    #[test]
    fn headers_are_read_only_when_wanted_and_must_parse() {
        let good = ipv4_frame([2, 0, 0, 0, 0, 9], [10, 0, 0, 2], [10, 0, 0, 1], 6);
        assert_eq!(read_headers(&good, good.len(), false), Ok(None));
        assert!(matches!(read_headers(&good, good.len(), true), Ok(Some(_))));
        let mut bad = good.clone();
        bad[14] = 0x41; // IHL 1
        assert_eq!(read_headers(&bad, bad.len(), false), Ok(None));
        assert_eq!(
            read_headers(&bad, bad.len(), true),
            Err(Verdict::DroppedMalformed)
        );
    }
}
