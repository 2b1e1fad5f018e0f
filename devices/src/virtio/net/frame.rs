//! Checks on a frame as the guest handed it over (virtio header + Ethernet frame).

use super::{MAX_FRAME_LEN, VNET_HDR_LEN};

/// Ethernet header length (destination, source, EtherType).
pub const ETH_HDR_LEN: usize = 14;

/// Why a frame is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than the virtio header plus an Ethernet header.
    #[error("frame of {0} bytes is shorter than the virtio and Ethernet headers")]
    TooShort(usize),
    /// Longer than we carry.
    #[error("frame of {0} bytes is longer than {max}", max = VNET_HDR_LEN + MAX_FRAME_LEN)]
    TooLong(usize),
}

/// Check the length `len` of virtio header + Ethernet frame.
pub fn check_tx_frame(len: usize) -> Result<(), FrameError> {
    match len {
        n if n < VNET_HDR_LEN + ETH_HDR_LEN => Err(FrameError::TooShort(n)),
        n if n > VNET_HDR_LEN + MAX_FRAME_LEN => Err(FrameError::TooLong(n)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        assert_eq!(check_tx_frame(25), Err(FrameError::TooShort(25)));
        assert!(check_tx_frame(26).is_ok());
        assert!(check_tx_frame(VNET_HDR_LEN + MAX_FRAME_LEN).is_ok());
        assert!(check_tx_frame(VNET_HDR_LEN + MAX_FRAME_LEN + 1).is_err());
    }
}
