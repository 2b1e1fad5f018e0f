//! The frame-checks stage: a frame must have a length the device carries (TX: the guest's
//! frame, at most the host link's MTU plus the Ethernet header and one VLAN tag; RX: a frame
//! from the TAP that fits the guest's buffer) and, when a later stage reads
//! its headers (anti-spoofing, audit), headers that parse. A TX frame that fails, and an RX
//! frame whose headers do not parse, are dropped with [`Verdict::DroppedMalformed`]; an RX
//! frame of the wrong length is dropped before the audit (it is the host's, or too big for
//! the guest's buffer, not something the guest did).

use packet::Verdict;

use super::checksum::ChecksumError;
use super::gso::GsoError;
use super::headers::{parse, FrameHeaders, VLAN_TPIDS};
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
    /// Longer than the host link carries (its MTU plus the Ethernet header and tag).
    #[error("frame of {len} bytes is longer than the link's {max} (MTU plus Ethernet header)")]
    OverMtu {
        /// The Ethernet frame's bytes.
        len: usize,
        /// The most the link takes for this frame.
        max: usize,
    },
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

/// Bytes of an IEEE 802.1Q tag.
pub const VLAN_TAG_LEN: usize = 4;

/// Why a frame is refused by the frame checks (`dropped-malformed`): its length, or what its
/// virtio header asks of the host or the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its length.
    #[error(transparent)]
    Length(#[from] FrameError),
    /// A GSO frame's rules.
    #[error(transparent)]
    Gso(#[from] GsoError),
    /// A checksum request the device can neither pass on nor carry out.
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    /// RX: work the driver did not negotiate (a partial checksum, a GSO type).
    #[error("frame needs an offload the driver did not negotiate")]
    Unnegotiated,
}

/// Check the length `len` of virtio header + Ethernet frame as the guest handed it over,
/// `head` its first bytes after the virtio header, against a host link of MTU `mtu` (`None`:
/// no limit but [`MAX_FRAME_LEN`]). The longest frame is the MTU plus [`ETH_HDR_LEN`], plus
/// [`VLAN_TAG_LEN`] for a tagged frame (as Linux's `is_skb_forwardable` allows); the device
/// negotiates no segmentation offload, so nothing longer can be split on the way.
pub fn check_tx_frame(len: usize, head: &[u8], mtu: Option<usize>) -> Result<(), FrameError> {
    if len < VNET_HDR_LEN + ETH_HDR_LEN {
        return Err(FrameError::TooShort(len));
    }
    if len > VNET_HDR_LEN + MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    check_link_len(len - VNET_HDR_LEN, head, mtu)
}

/// Check an Ethernet frame of `frame_len` bytes whose first bytes are `head` against a link
/// of MTU `mtu` (`None`: no limit): at most the MTU plus [`ETH_HDR_LEN`], plus
/// [`VLAN_TAG_LEN`] for a tagged frame.
pub fn check_link_len(frame_len: usize, head: &[u8], mtu: Option<usize>) -> Result<(), FrameError> {
    let Some(mtu) = mtu else {
        return Ok(());
    };
    let tagged = head
        .get(12..14)
        .is_some_and(|t| VLAN_TPIDS.contains(&u16::from_be_bytes([t[0], t[1]])));
    let max = mtu + ETH_HDR_LEN + if tagged { VLAN_TAG_LEN } else { 0 };
    if frame_len > max {
        return Err(FrameError::OverMtu {
            len: frame_len,
            max,
        });
    }
    Ok(())
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
        let head = [0u8; 14];
        assert_eq!(
            check_tx_frame(25, &head, None),
            Err(FrameError::TooShort(25))
        );
        assert!(check_tx_frame(26, &head, None).is_ok());
        assert!(check_tx_frame(VNET_HDR_LEN + MAX_FRAME_LEN, &head, None).is_ok());
        assert!(check_tx_frame(VNET_HDR_LEN + MAX_FRAME_LEN + 1, &head, None).is_err());
        // A 1500-byte MTU: 1514-byte frames, 1518 with an 802.1Q tag (IEEE 802.3 section 3.2.7).
        assert!(check_tx_frame(VNET_HDR_LEN + 1514, &head, Some(1500)).is_ok());
        assert_eq!(
            check_tx_frame(VNET_HDR_LEN + 1515, &head, Some(1500)),
            Err(FrameError::OverMtu {
                len: 1515,
                max: 1514
            })
        );
        let mut tagged = head;
        tagged[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        assert!(check_tx_frame(VNET_HDR_LEN + 1518, &tagged, Some(1500)).is_ok());
        assert!(check_tx_frame(VNET_HDR_LEN + 1519, &tagged, Some(1500)).is_err());
        assert!(check_tx_frame(VNET_HDR_LEN + 3054, &head, Some(1500)).is_err());
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
