//! The virtio-net features the device offers beyond the MAC and MTU, and the dependencies a
//! driver's choice of them must respect (virtio 1.2 section 5.1.3.1). Bit numbers are
//! `virtio_bindings`' (Linux's `include/uapi/linux/virtio_net.h` and `virtio_ring.h`).
//!
//! | feature | what the device then does |
//! |---|---|
//! | VIRTIO_RING_F_EVENT_IDX | notifications and interrupts suppressed by event index (2.7.7, 2.7.10) |
//! | VIRTIO_NET_F_MRG_RXBUF | a received frame may span several RX chains (`num_buffers`) |
//! | CSUM, HOST_TSO4/6, HOST_ECN | takes partly checksummed and GSO frames from the driver |
//! | GUEST_CSUM, GUEST_TSO4/6, GUEST_ECN | hands the driver such frames from the host (TUNSETOFFLOAD) |
//!
//! The offloads are offered only on a backend that carries them (a TAP with a virtio header).
//! UFO and USO are not offered: the headers installed here predate USO's TAP flags, and UFO
//! is deprecated in Linux.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_GUEST_USO4,
    VIRTIO_NET_F_GUEST_USO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_HOST_USO, VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::virtio::feature;

/// Offered on every backend: event-index suppression and mergeable RX buffers.
pub const QUEUE_FEATURES: u64 = feature(VIRTIO_RING_F_EVENT_IDX) | feature(VIRTIO_NET_F_MRG_RXBUF);

/// Offered on a backend that carries offloads: checksum and TCP segmentation offload, both
/// ways.
pub const OFFLOAD_FEATURES: u64 = feature(VIRTIO_NET_F_CSUM)
    | feature(VIRTIO_NET_F_HOST_TSO4)
    | feature(VIRTIO_NET_F_HOST_TSO6)
    | feature(VIRTIO_NET_F_HOST_ECN)
    | feature(VIRTIO_NET_F_GUEST_CSUM)
    | feature(VIRTIO_NET_F_GUEST_TSO4)
    | feature(VIRTIO_NET_F_GUEST_TSO6)
    | feature(VIRTIO_NET_F_GUEST_ECN);

/// Section 5.1.3.1: each feature and what it requires (any one of them).
const REQUIRES: [(u32, &[u32]); 11] = [
    (VIRTIO_NET_F_GUEST_TSO4, &[VIRTIO_NET_F_GUEST_CSUM]),
    (VIRTIO_NET_F_GUEST_TSO6, &[VIRTIO_NET_F_GUEST_CSUM]),
    (
        VIRTIO_NET_F_GUEST_ECN,
        &[VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6],
    ),
    (VIRTIO_NET_F_GUEST_UFO, &[VIRTIO_NET_F_GUEST_CSUM]),
    (VIRTIO_NET_F_GUEST_USO4, &[VIRTIO_NET_F_GUEST_CSUM]),
    (VIRTIO_NET_F_GUEST_USO6, &[VIRTIO_NET_F_GUEST_CSUM]),
    (VIRTIO_NET_F_HOST_TSO4, &[VIRTIO_NET_F_CSUM]),
    (VIRTIO_NET_F_HOST_TSO6, &[VIRTIO_NET_F_CSUM]),
    (
        VIRTIO_NET_F_HOST_ECN,
        &[VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6],
    ),
    (VIRTIO_NET_F_HOST_UFO, &[VIRTIO_NET_F_CSUM]),
    (VIRTIO_NET_F_HOST_USO, &[VIRTIO_NET_F_CSUM]),
];

/// Whether `acked` respects section 5.1.3.1's dependencies.
///
/// # Errors
/// Names the first feature bit whose requirement is missing.
pub fn check_dependencies(acked: u64) -> Result<(), String> {
    for (bit, needs) in REQUIRES {
        let has = |b: u32| acked & feature(b) != 0;
        if has(bit) && !needs.iter().any(|&n| has(n)) {
            return Err(format!(
                "feature bit {bit} requires one of bits {needs:?} (virtio 1.2 section 5.1.3.1)"
            ));
        }
    }
    Ok(())
}

/// Whether the driver takes GSO frames from the device (GUEST_TSO4/6, UFO, USO4/6): then a
/// received frame may be up to 64 KiB.
pub fn guest_gso(acked: u64) -> bool {
    let gso = feature(VIRTIO_NET_F_GUEST_TSO4)
        | feature(VIRTIO_NET_F_GUEST_TSO6)
        | feature(VIRTIO_NET_F_GUEST_UFO)
        | feature(VIRTIO_NET_F_GUEST_USO4)
        | feature(VIRTIO_NET_F_GUEST_USO6);
    acked & gso != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_the_specs() {
        // virtio 1.2 section 5.1.3 and 6 (reserved feature bits): CSUM 0, GUEST_CSUM 1,
        // GUEST_TSO4 7, GUEST_TSO6 8, GUEST_ECN 9, HOST_TSO4 11, HOST_TSO6 12, HOST_ECN 13,
        // MRG_RXBUF 15, RING_EVENT_IDX 29.
        let bits = [0, 1, 7, 8, 9, 11, 12, 13];
        assert_eq!(
            OFFLOAD_FEATURES,
            bits.iter().map(|&b| 1u64 << b).sum::<u64>()
        );
        assert_eq!(QUEUE_FEATURES, (1 << 15) | (1 << 29));
    }

    #[test]
    fn dependencies_of_section_5_1_3_1() {
        assert!(check_dependencies(0).is_ok());
        assert!(check_dependencies(OFFLOAD_FEATURES | QUEUE_FEATURES).is_ok());
        for (bits, ok) in [
            (vec![7], false),      // GUEST_TSO4 without GUEST_CSUM
            (vec![1, 7], true),    // with it
            (vec![1, 9], false),   // GUEST_ECN without a GUEST_TSO
            (vec![1, 8, 9], true), // GUEST_TSO6 is enough
            (vec![11], false),     // HOST_TSO4 without CSUM
            (vec![12], false),     // HOST_TSO6 without CSUM
            (vec![0, 13], false),  // HOST_ECN without a HOST_TSO
            (vec![0, 11, 13], true),
            (vec![0], true), // CSUM alone
            (vec![1], true), // GUEST_CSUM alone
        ] {
            let acked = bits.iter().map(|&b| 1u64 << b).sum();
            assert_eq!(check_dependencies(acked).is_ok(), ok, "{bits:?}");
        }
        assert!(guest_gso(1 << 8) && !guest_gso(1 << 1 | 1 << 11));
    }
}
