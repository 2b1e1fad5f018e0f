//! `struct virtio_net_hdr_v1` (virtio 1.2 section 5.1.6, 12 bytes, little-endian), the header
//! in front of every frame, and the rule that its fields take effect only for the features
//! the driver negotiated. The device offers no offload today, so both directions clear every
//! field the guest or the host sets (but RX's `num_buffers`, which the RX queue writes).
//!
//! | bytes | field | meaningful with (TX, driver → device) | (RX, device → driver) |
//! |---|---|---|---|
//! | 0 | `flags`: NEEDS_CSUM | VIRTIO_NET_F_CSUM | VIRTIO_NET_F_GUEST_CSUM |
//! | 0 | `flags`: DATA_VALID, RSC_INFO | never (5.1.6.2.1) | GUEST_CSUM / RSC_EXT |
//! | 1 | `gso_type` (and its ECN bit) | HOST_TSO4/TSO6/UFO/USO (ECN: HOST_ECN) | GUEST_TSO4/TSO6/UFO/USO4/USO6 (ECN: GUEST_ECN) |
//! | 2-3, 4-5 | `hdr_len`, `gso_size` | a GSO type kept | a GSO type kept |
//! | 6-7, 8-9 | `csum_start`, `csum_offset` | NEEDS_CSUM kept | NEEDS_CSUM kept |
//! | 10-11 | `num_buffers` | never (unused on TX, 5.1.6.2) | set by the device |
//!
//! The feature bits and header values are `virtio_bindings::virtio_net`'s (Linux's
//! `include/uapi/linux/virtio_net.h`).

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4,
    VIRTIO_NET_F_GUEST_USO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_HDR_GSO_UDP_L4,
};

use super::VNET_HDR_LEN;
use crate::virtio::feature;

const FLAGS: usize = 0;
const GSO_TYPE: usize = 1;
/// `hdr_len` and `gso_size`.
const GSO_FIELDS: std::ops::Range<usize> = 2..6;
/// `csum_start` and `csum_offset`.
const CSUM_FIELDS: std::ops::Range<usize> = 6..10;
/// Offset of `num_buffers`.
pub const NUM_BUFFERS: usize = 10;

/// Which way a header travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderDirection {
    /// Driver to device: the guest's frame on its way to the host.
    Tx,
    /// Device to driver: the host's frame on its way to the guest.
    Rx,
}

/// Features that make each field meaningful in one direction (see the module table).
struct Offloads {
    csum: u32,
    /// (gso_type, feature) pairs.
    gso: &'static [(u32, u32)],
    ecn: u32,
}

impl Offloads {
    /// Every feature bit that makes a field meaningful.
    const fn mask(&self) -> u64 {
        let mut m = feature(self.csum) | feature(self.ecn);
        let mut i = 0;
        while i < self.gso.len() {
            m |= feature(self.gso[i].1);
            i += 1;
        }
        m
    }
}

const TX_MASK: u64 = TX_OFFLOADS.mask();
const RX_MASK: u64 = RX_OFFLOADS.mask();

const TX_OFFLOADS: Offloads = Offloads {
    csum: VIRTIO_NET_F_CSUM,
    gso: &[
        (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_F_HOST_TSO4),
        (VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_F_HOST_TSO6),
        (VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_F_HOST_UFO),
        (VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_F_HOST_USO),
    ],
    ecn: VIRTIO_NET_F_HOST_ECN,
};

const RX_OFFLOADS: Offloads = Offloads {
    csum: VIRTIO_NET_F_GUEST_CSUM,
    gso: &[
        (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_F_GUEST_TSO4),
        (VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_F_GUEST_TSO6),
        (VIRTIO_NET_HDR_GSO_UDP, VIRTIO_NET_F_GUEST_UFO),
        (VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_F_GUEST_USO4),
        (VIRTIO_NET_HDR_GSO_UDP_L4, VIRTIO_NET_F_GUEST_USO6),
    ],
    ecn: VIRTIO_NET_F_GUEST_ECN,
};

/// Clear the fields of `hdr` (the first [`VNET_HDR_LEN`] bytes are used) that the features
/// in `acked` do not make meaningful in direction `dir`; `num_buffers` is cleared on TX and
/// left to the caller on RX. Returns whether anything was cleared. A shorter `hdr` is left
/// alone (the frame checks drop such a frame).
pub fn clear_unnegotiated(hdr: &mut [u8], acked: u64, dir: HeaderDirection) -> bool {
    let Some(hdr) = hdr.get_mut(..VNET_HDR_LEN) else {
        return false;
    };
    // The common case, every packet today: no offload negotiated, so no field but RX's
    // num_buffers may be set.
    let mask = match dir {
        HeaderDirection::Tx => TX_MASK,
        HeaderDirection::Rx => RX_MASK,
    };
    if acked & mask == 0 {
        let mut h = [0u8; VNET_HDR_LEN];
        h.copy_from_slice(hdr);
        let num_buffers = [h[NUM_BUFFERS], h[NUM_BUFFERS + 1]];
        let [a0, a1, a2, a3, a4, a5, a6, a7, b0, b1, c0, c1] = h;
        let mut set = u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]) != 0 || (b0 | b1) != 0;
        hdr.copy_from_slice(&[0u8; VNET_HDR_LEN]);
        match dir {
            HeaderDirection::Tx => set |= (c0 | c1) != 0,
            HeaderDirection::Rx => hdr[NUM_BUFFERS..].copy_from_slice(&num_buffers),
        }
        return set;
    }
    let offloads = match dir {
        HeaderDirection::Tx => &TX_OFFLOADS,
        HeaderDirection::Rx => &RX_OFFLOADS,
    };
    let mut before = [0u8; VNET_HDR_LEN];
    before.copy_from_slice(hdr);
    let has = |bit: u32| acked & feature(bit) != 0;
    // flags: NEEDS_CSUM with the checksum feature; the other flags only towards the driver,
    // and then only with GUEST_CSUM (DATA_VALID) -- RSC_INFO needs RSC_EXT, never offered.
    let mut keep_flags = 0u8;
    if has(offloads.csum) {
        keep_flags |= flag(VIRTIO_NET_HDR_F_NEEDS_CSUM);
        if dir == HeaderDirection::Rx {
            keep_flags |= flag(virtio_bindings::virtio_net::VIRTIO_NET_HDR_F_DATA_VALID);
        }
    }
    hdr[FLAGS] &= keep_flags;
    if hdr[FLAGS] & flag(VIRTIO_NET_HDR_F_NEEDS_CSUM) == 0 {
        hdr[CSUM_FIELDS].fill(0);
    }
    let gso = u32::from(hdr[GSO_TYPE]);
    let ecn = gso & VIRTIO_NET_HDR_GSO_ECN;
    let kind = gso & !VIRTIO_NET_HDR_GSO_ECN;
    let kind_ok = kind != VIRTIO_NET_HDR_GSO_NONE
        && offloads.gso.iter().any(|&(t, bit)| t == kind && has(bit));
    if kind_ok {
        if ecn != 0 && !has(offloads.ecn) {
            hdr[GSO_TYPE] = flag(kind);
        }
    } else {
        hdr[GSO_TYPE] = 0;
        hdr[GSO_FIELDS].fill(0);
    }
    if dir == HeaderDirection::Tx {
        hdr[NUM_BUFFERS..NUM_BUFFERS + 2].fill(0);
    }
    *hdr != before
}

/// Whether `hdr` (a header from the host, RX) asks for work the driver did not negotiate: a
/// partial checksum (NEEDS_CSUM without GUEST_CSUM) or a GSO type without its GUEST_*
/// feature. Clearing those fields would hand the guest a frame with a wrong checksum or one
/// packet longer than the link, so such a frame (one the TAP queued before the driver's
/// offloads were set) is dropped instead. A header cut short asks for nothing.
pub fn asks_unnegotiated_rx_offload(hdr: &[u8], acked: u64) -> bool {
    let Some(hdr) = hdr.get(..VNET_HDR_LEN) else {
        return false;
    };
    let has = |bit: u32| acked & feature(bit) != 0;
    let csum = hdr[FLAGS] & flag(VIRTIO_NET_HDR_F_NEEDS_CSUM) != 0 && !has(RX_OFFLOADS.csum);
    let kind = u32::from(hdr[GSO_TYPE]) & !VIRTIO_NET_HDR_GSO_ECN;
    let gso = kind != VIRTIO_NET_HDR_GSO_NONE
        && !RX_OFFLOADS
            .gso
            .iter()
            .any(|&(t, bit)| t == kind && has(bit));
    csum || gso
}

/// A header value as the byte it is stored in (every flag and GSO value fits).
fn flag(v: u32) -> u8 {
    u8::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_frames_asking_for_unnegotiated_work_are_recognised() {
        // GUEST_CSUM is bit 1, GUEST_TSO4 bit 7 (virtio 1.2 section 5.1.3).
        let (csum, tso4) = (1u64 << 1, 1u64 << 7);
        let mut data_valid = [0u8; 12];
        data_valid[0] = 2;
        assert!(!asks_unnegotiated_rx_offload(&data_valid, 0), "a hint only");
        let h = gso_header(); // NEEDS_CSUM + TCPV4
        assert!(asks_unnegotiated_rx_offload(&h, 0));
        assert!(
            asks_unnegotiated_rx_offload(&h, csum),
            "GSO without GUEST_TSO4"
        );
        assert!(!asks_unnegotiated_rx_offload(&h, csum | tso4));
        let mut partial = [0u8; 12];
        partial[0] = 1;
        assert!(asks_unnegotiated_rx_offload(&partial, tso4));
        assert!(!asks_unnegotiated_rx_offload(&partial, csum));
        assert!(!asks_unnegotiated_rx_offload(&h[..11], 0), "cut short");
    }

    /// A TX header as the report wrote it: NEEDS_CSUM, TCPV4 GSO of 1 000 bytes,
    /// csum_start 34, csum_offset 16 (field values per virtio 1.2 section 5.1.6).
    fn gso_header() -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = 1; // NEEDS_CSUM
        h[1] = 1; // GSO_TCPV4
        h[2..4].copy_from_slice(&54u16.to_le_bytes());
        h[4..6].copy_from_slice(&1000u16.to_le_bytes());
        h[6..8].copy_from_slice(&34u16.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        h
    }

    /// VERSION_1 and MAC: what the device offers today.
    const PLAIN: u64 = (1 << 32) | (1 << 5);

    #[test]
    fn without_offload_features_every_field_is_cleared() {
        for dir in [HeaderDirection::Tx, HeaderDirection::Rx] {
            let mut h = gso_header();
            h[0] = 0xff;
            h[10] = 3;
            assert!(clear_unnegotiated(&mut h, PLAIN, dir));
            let num_buffers = if dir == HeaderDirection::Rx { 3 } else { 0 };
            assert_eq!(h, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, num_buffers, 0], "{dir:?}");
            assert!(!clear_unnegotiated(&mut h, PLAIN, dir), "already clean");
        }
        // The report's other two headers: TCPV4 with gso_size 0; NEEDS_CSUM at 60 000.
        let mut h = [0u8; VNET_HDR_LEN];
        h[1] = 1;
        assert!(clear_unnegotiated(&mut h, PLAIN, HeaderDirection::Tx));
        assert_eq!(h, [0; VNET_HDR_LEN]);
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = 1;
        h[6..8].copy_from_slice(&60_000u16.to_le_bytes());
        assert!(clear_unnegotiated(&mut h, PLAIN, HeaderDirection::Tx));
        assert_eq!(h, [0; VNET_HDR_LEN]);
    }

    #[test]
    fn each_field_needs_its_own_feature() {
        // Bits from virtio 1.2 section 5.1.3: CSUM 0, GUEST_CSUM 1, HOST_TSO4 11, HOST_ECN 13,
        // HOST_TSO6 12.
        let csum_only = PLAIN | 1;
        let mut h = gso_header();
        clear_unnegotiated(&mut h, csum_only, HeaderDirection::Tx);
        assert_eq!(
            (h[0], h[1], &h[2..6], &h[6..10]),
            (1, 0, &[0u8; 4][..], &gso_header()[6..10])
        );
        let tso4 = PLAIN | 1 | (1 << 11);
        let mut h = gso_header();
        h[1] |= 0x80; // ECN without HOST_ECN
        clear_unnegotiated(&mut h, tso4, HeaderDirection::Tx);
        assert_eq!(h, gso_header(), "TSO4 kept, its ECN bit dropped");
        let tso6_only = PLAIN | 1 | (1 << 12);
        let mut h = gso_header();
        clear_unnegotiated(&mut h, tso6_only, HeaderDirection::Tx);
        assert_eq!(
            (h[1], &h[2..6]),
            (0, &[0u8; 4][..]),
            "TCPV4 needs HOST_TSO4"
        );
        // GUEST_CSUM lets DATA_VALID through towards the driver, never from it.
        let guest_csum = PLAIN | 2;
        let mut h = [2u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        clear_unnegotiated(&mut h, guest_csum, HeaderDirection::Rx);
        assert_eq!(h[0], 2);
        let both = guest_csum | 1;
        let mut h = [2u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        clear_unnegotiated(&mut h, both, HeaderDirection::Tx);
        assert_eq!(h[0], 0, "DATA_VALID is never the driver's to set");
    }

    #[test]
    fn a_short_header_is_left_alone() {
        let mut h = [0xffu8; 5];
        assert!(!clear_unnegotiated(&mut h, PLAIN, HeaderDirection::Tx));
        assert_eq!(h, [0xff; 5]);
    }
}
