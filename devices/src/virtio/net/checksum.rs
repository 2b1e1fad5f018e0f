//! Checksum offload requests (virtio 1.2 section 5.1.6.2: NEEDS_CSUM, `csum_start`,
//! `csum_offset`; the sender leaves the pseudo-header's sum in the field, and the receiver
//! sums from `csum_start` to the end, RFC 1071, and stores the complement at `csum_start +
//! csum_offset`).
//!
//! The host kernel does that work after anti-spoofing and the audit have read the frame, so
//! it gets only requests for the frame's own TCP or UDP checksum field
//! ([`check_csum_request`]): a request elsewhere would let a guest change 16 bits of an
//! address those stages passed. Any other request (a tunnel's inner TCP header, say) is
//! carried out by the device in its own copy of the frame's head, before the frame checks
//! ([`checksum_in_device`]), and the frame goes on as a plain one.

use vm_memory::VolatileSlice;

use super::headers::{FrameHeaders, TCP, UDP};
use super::VNET_HDR_LEN;

/// A checksum request that cannot be passed on or carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    /// Not the frame's TCP/UDP checksum field (or its headers were not read).
    #[error("checksum request at csum_start {start}, csum_offset {offset} is not the TCP/UDP checksum field")]
    Field {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
    },
    /// The field lies past the bytes the device copied, or the start past the frame.
    #[error(
        "checksum request at csum_start {start}, csum_offset {offset} is outside the frame's head"
    )]
    OutsideHead {
        /// csum_start.
        start: u16,
        /// csum_offset.
        offset: u16,
    },
}

/// The `flags` bit NEEDS_CSUM (`VIRTIO_NET_HDR_F_NEEDS_CSUM`, virtio 1.2 section 5.1.6).
pub(super) const NEEDS_CSUM: u8 = 1;

/// `(csum_start, csum_offset)` of virtio header `hdr` if it has NEEDS_CSUM.
fn request(hdr: &[u8]) -> Option<(u16, u16)> {
    let hdr = hdr.get(..VNET_HDR_LEN)?;
    (hdr[0] & NEEDS_CSUM != 0).then(|| {
        (
            u16::from_le_bytes([hdr[6], hdr[7]]),
            u16::from_le_bytes([hdr[8], hdr[9]]),
        )
    })
}

/// The checksum request of virtio header `hdr` (the first 12 bytes), if NEEDS_CSUM is set
/// (and kept: the driver negotiated the checksum feature), must be for the checksum field of
/// the TCP or UDP header in `parsed` (RFC 9293 section 3.1: offset 16; RFC 768: offset 6):
/// `csum_start` that header's offset, `csum_offset` the field's.
///
/// # Errors
/// [`ChecksumError::Field`]: anywhere else, or the headers were not read.
pub fn check_csum_request(hdr: &[u8], parsed: Option<&FrameHeaders>) -> Result<(), ChecksumError> {
    let Some((start, offset)) = request(hdr) else {
        return Ok(());
    };
    let field = parsed.and_then(|h| h.ip).and_then(|ip| match ip.protocol {
        TCP if ip.headers_len > 0 => Some((ip.l4_offset, 16)),
        UDP if ip.headers_len > 0 => Some((ip.l4_offset, 6)),
        _ => None,
    });
    match field {
        Some(f) if f == (start, offset) => Ok(()),
        _ => Err(ChecksumError::Field { start, offset }),
    }
}

/// Carry out the checksum request of `head` (the device's copy of a TX frame's first bytes,
/// virtio header included) itself: sum the frame from `csum_start` to its end (`len` bytes
/// with the header; the bytes after `head` are in `rest`, guest memory in frame order),
/// store the complement at `csum_start + csum_offset` in `head` (0 as 0xffff, as Linux's
/// `skb_checksum_help` does), and clear NEEDS_CSUM and the two fields.
///
/// # Safety
/// Every iovec of `rest` must point to memory readable for its whole length during the call
/// (guest memory that the caller keeps mapped; the guest may change it, which only makes
/// its own checksum wrong).
///
/// # Errors
/// [`ChecksumError::OutsideHead`]: the field is not within `head`; nothing is changed.
pub unsafe fn checksum_in_device(
    head: &mut [u8],
    rest: &[libc::iovec],
    len: usize,
) -> Result<(), ChecksumError> {
    let Some((start, offset)) = request(head) else {
        return Ok(());
    };
    let from = VNET_HDR_LEN + usize::from(start);
    let field = from + usize::from(offset);
    if field + 2 > head.len() || from >= len {
        return Err(ChecksumError::OutsideHead { start, offset });
    }
    let mut sum = Sum::default();
    sum.add(&head[from..]);
    let mut buf = [0u8; 4096];
    for iov in rest {
        // SAFETY: the caller guarantees the iovec is readable memory for the call.
        let slice = unsafe { VolatileSlice::new(iov.iov_base.cast(), iov.iov_len) };
        let mut at = 0;
        while at < iov.iov_len {
            let n = (iov.iov_len - at).min(buf.len());
            let Ok(part) = slice.subslice(at, n) else {
                break;
            };
            part.copy_to(&mut buf[..n]);
            sum.add(&buf[..n]);
            at += n;
        }
    }
    let folded = !sum.fold();
    let value = if folded == 0 { 0xffff } else { folded };
    head[field..field + 2].copy_from_slice(&value.to_be_bytes());
    head[0] &= !NEEDS_CSUM;
    head[6..10].fill(0);
    Ok(())
}

/// A running RFC 1071 sum over bytes that arrive in pieces of any length.
#[derive(Default)]
struct Sum {
    total: u64,
    /// The next byte is the low byte of a 16-bit word.
    odd: bool,
}

impl Sum {
    fn add(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.total += if self.odd {
                u64::from(b)
            } else {
                u64::from(b) << 8
            };
            self.odd = !self.odd;
        }
    }

    fn fold(&self) -> u16 {
        let mut s = self.total;
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        u16::try_from(s).unwrap_or(0xffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::headers::parse;
    use crate::virtio::net::headers::tests::tcp4_frame as tcp4;

    #[test]
    fn a_checksum_request_must_name_the_tcp_or_udp_checksum_field() {
        let f = tcp4(66 + 100);
        let parsed = parse(&f, f.len()).expect("parse");
        assert_eq!(parsed.ip.expect("ip").l4_offset, 34);
        let request = |flags: u8, start: u16, offset: u16| {
            let mut h = [0u8; 12];
            h[0] = flags;
            h[6..8].copy_from_slice(&start.to_le_bytes());
            h[8..10].copy_from_slice(&offset.to_le_bytes());
            check_csum_request(&h, Some(&parsed))
        };
        // TCP: the header at 14 + 20, its checksum 16 bytes in (RFC 9293 section 3.1).
        assert_eq!(request(1, 34, 16), Ok(()));
        assert_eq!(request(0, 26, 0), Ok(()), "no request, nothing to check");
        // The IPv4 source address (26) or anywhere else in the headers: refused.
        for (start, offset) in [(26, 0), (34, 0), (14, 10), (34, 18), (0, 0)] {
            assert_eq!(
                request(1, start, offset),
                Err(ChecksumError::Field { start, offset })
            );
        }
        let mut h = [0u8; 12];
        h[0] = 1;
        h[6] = 34;
        h[8] = 16;
        assert!(check_csum_request(&h, None).is_err(), "headers not read");
        assert!(
            check_csum_request(&h[..8], None).is_ok(),
            "cut short: not a header"
        );
    }

    #[test]
    fn the_flag_is_the_headers() {
        let flag = virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_NEEDS_CSUM;
        assert_eq!(u32::from(NEEDS_CSUM), flag);
    }

    #[test]
    fn the_device_sums_what_it_does_not_pass_on() {
        // A UDP-like payload whose checksum field sits 20 bytes into the frame's data: the
        // whole frame is a 12-byte header, 100 bytes in the device's head, 901 in "guest
        // memory" (an odd split, and an odd length).
        let frame: Vec<u8> = (0..1001u32).map(|i| (i * 7 + 3).to_le_bytes()[0]).collect();
        let (start, offset) = (40u16, 20u16);
        let mut head = vec![0u8; VNET_HDR_LEN];
        head[0] = NEEDS_CSUM;
        head[6..8].copy_from_slice(&start.to_le_bytes());
        head[8..10].copy_from_slice(&offset.to_le_bytes());
        head.extend_from_slice(&frame[..100]);
        let mut rest = frame[100..].to_vec();
        let iov = [libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        }];
        // SAFETY: `rest` lives for the call.
        unsafe { checksum_in_device(&mut head, &iov, VNET_HDR_LEN + frame.len()) }.expect("done");
        assert_eq!(&head[..12], &[0u8; 12], "the request is gone");
        // RFC 1071: what the field held before (the pseudo-header's sum, in real use) plus
        // the covered bytes with the stored checksum in it sum to 0xffff.
        let mut covered = frame[60..62].to_vec();
        covered.extend_from_slice(&head[VNET_HDR_LEN + 40..]);
        covered.extend_from_slice(&rest);
        let mut s = Sum::default();
        s.add(&covered);
        assert_eq!(s.fold(), 0xffff);
        let at = VNET_HDR_LEN + 60;
        assert_ne!(&head[at..at + 2], &frame[60..62], "the field was written");
        // Beyond the head: refused, nothing changed.
        let mut far = vec![0u8; VNET_HDR_LEN];
        far[0] = NEEDS_CSUM;
        far[6..8].copy_from_slice(&99u16.to_le_bytes()); // field at 111..113, past 112
        far.extend_from_slice(&frame[..100]);
        let before = far.clone();
        // SAFETY: as above.
        let e = unsafe { checksum_in_device(&mut far, &iov, VNET_HDR_LEN + frame.len()) };
        assert_eq!(
            e,
            Err(ChecksumError::OutsideHead {
                start: 99,
                offset: 0
            })
        );
        assert_eq!(far, before);
    }
}
