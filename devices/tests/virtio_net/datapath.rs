//! The data path: frames both ways, multi-descriptor chains, and what is dropped and counted.

use crate::fixture::*;

#[test]
fn handshake_offers_version_1_mac_event_idx_and_mergeable_buffers() {
    let mut f = fixture();
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_DEVICE_ID), 1);
    // virtio 1.2 section 6: VIRTIO_RING_F_EVENT_IDX is bit 29; section 5.1.3:
    // VIRTIO_NET_F_MRG_RXBUF bit 15. No offload: this backend carries none.
    assert_eq!(f.driver.device_features(), FEATURES | (1 << 29) | (1 << 15));
    assert_ne!(f.status() & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    let mac: Vec<u8> = (0..6)
        .map(|i| {
            let mut b = [0u8; 1];
            devices::BusDevice::read(&mut f.driver.transport, 0x100 + i, &mut b);
            b[0]
        })
        .collect();
    assert_eq!(mac, MAC.0);
    assert_eq!(
        f.driver.read_reg(VIRTIO_MMIO_QUEUE_NUM_MAX),
        u32::from(QUEUE_SIZE)
    );
}

#[test]
fn tx_frames_reach_the_backend_with_their_header() {
    let mut f = fixture();
    for (len, fill) in [(60usize, 1u8), (1500, 2), (9000, 3)] {
        let fr = frame(len, fill);
        f.send(&fr);
        assert_eq!(f.recv_peer().as_deref(), Some(fr.as_slice()));
    }
    let used = f.driver.take_used(TXQ);
    assert_eq!(used.len(), 3, "every chain returned");
    let s = f.snap();
    assert_eq!((s.tx_packets, s.tx_bytes), (3, 60 + 1500 + 9000));
    assert!(
        f.driver.irq.eventfd().read().expect("irq") >= 1,
        "used-buffer interrupt"
    );
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) & 1, 1);
    f.driver.write_reg(VIRTIO_MMIO_INTERRUPT_ACK, 1);
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS), 0);
}

#[test]
fn tx_gathers_multi_descriptor_chains() {
    let mut f = fixture();
    let fr = frame(200, 7);
    let a = SCRATCH;
    let b = SCRATCH + 0x1000;
    f.driver.mem_write(a, &fr[..VNET_HDR_LEN]);
    f.driver.mem_write(b, &fr[VNET_HDR_LEN..]);
    f.driver.add_chain(
        TXQ,
        10,
        &[
            (a, VNET_HDR_LEN as u32, false),
            (SCRATCH + 0x2000, 0, false),
            (b, 200, false),
        ],
    );
    f.driver.kick(TXQ);
    f.pump();
    assert_eq!(
        f.recv_peer().as_deref(),
        Some(fr.as_slice()),
        "zero-length descriptors are fine"
    );
}

#[test]
fn tx_frames_in_pieces_arrive_whole() {
    // Pieces that split the virtio header, the headers the stages read (the first 140 bytes,
    // which the device copies) and the rest (written from guest memory).
    let mut f = fixture();
    for (i, len) in [200usize, 1514].into_iter().enumerate() {
        let fr = frame(len, i as u8);
        let cuts = [0, 7, 90, 150, fr.len()];
        let mut descs = Vec::new();
        for (k, w) in cuts.windows(2).enumerate() {
            let (from, to) = (w[0], w[1]);
            let at = SCRATCH + 0x1000 * k as u64;
            f.driver.mem_write(at, &fr[from..to]);
            descs.push((at, (to - from) as u32, false));
        }
        f.driver.add_chain(TXQ, 20 + i as u16, &descs);
        f.driver.kick(TXQ);
        f.pump();
        assert_eq!(f.recv_peer().as_deref(), Some(fr.as_slice()), "{len} bytes");
    }
}

#[test]
fn rx_frames_land_in_guest_buffers() {
    let mut f = fixture();
    f.post_rx(4, 2048);
    let fr = frame(1500, 5);
    f.peer.send(&fr).expect("inject");
    f.pump();
    let used = f.driver.take_used(RXQ);
    assert_eq!(used.len(), 1);
    let (id, len) = used[0];
    assert_eq!(len as usize, fr.len());
    let got = f
        .driver
        .read_mem(GuestDriver::slot_addr(RXQ, id as u16), fr.len());
    assert_eq!(&got[VNET_HDR_LEN..], &fr[VNET_HDR_LEN..]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers = 1");
    assert_eq!(f.snap().rx_bytes, 1500);
}

#[test]
fn rx_waits_for_guest_buffers_without_spinning() {
    let mut f = fixture();
    let fr = frame(64, 1);
    f.peer.send(&fr).expect("inject");
    f.peer.send(&frame(64, 2)).expect("inject");
    f.pump();
    assert_eq!(f.snap().rx_no_buffer, 1);
    assert_eq!(f.snap().rx_packets, 0);
    // Backpressure, not a busy loop: with frames waiting, nothing wakes the loop.
    assert_eq!(f.em.run_with_timeout(50).expect("loop"), 0);
    f.post_rx(2, 2048);
    assert_eq!(
        f.snap().rx_packets,
        2,
        "both frames delivered once buffers came"
    );
    assert_eq!(f.snap().rx_dropped, 0, "nothing lost");
}

#[test]
fn rx_frame_survives_an_unusable_chain() {
    let mut f = fixture();
    f.driver.write_desc(
        RXQ,
        0,
        RawDesc {
            addr: SCRATCH,
            len: 2048,
            flags: 0,
            next: 0,
        },
    );
    f.driver.publish(RXQ, 0);
    f.driver.kick(RXQ);
    let fr = frame(300, 4);
    f.peer.send(&fr).expect("inject");
    f.pump();
    assert_eq!(f.snap().malformed_chains, 1);
    f.post_rx(1, 2048);
    let used = f.driver.take_used(RXQ);
    assert_eq!(used.len(), 2);
    assert_eq!(
        used[1].1 as usize,
        fr.len(),
        "the frame went into the next good buffer"
    );
    let got = f
        .driver
        .read_mem(GuestDriver::slot_addr(RXQ, used[1].0 as u16), fr.len());
    assert_eq!(&got[VNET_HDR_LEN..], &fr[VNET_HDR_LEN..]);
    assert_eq!(f.snap().rx_dropped, 0);
}

#[test]
fn rx_multi_descriptor_chain_gets_head_and_payload() {
    let mut f = fixture();
    // 12-byte header buffer, then two data buffers: the frame spans all three.
    f.driver.add_chain(
        RXQ,
        30,
        &[
            (SCRATCH, 12, true),
            (SCRATCH + 0x1000, 100, true),
            (SCRATCH + 0x2000, 2000, true),
        ],
    );
    f.driver.kick(RXQ);
    let fr = frame(1000, 6);
    f.peer.send(&fr).expect("inject");
    f.pump();
    assert_eq!(f.driver.take_used(RXQ), vec![(30, fr.len() as u32)]);
    let mut got = f.driver.read_mem(SCRATCH, 12);
    got.extend(f.driver.read_mem(SCRATCH + 0x1000, 100));
    got.extend(f.driver.read_mem(SCRATCH + 0x2000, fr.len() - 112));
    assert_eq!(&got[VNET_HDR_LEN..], &fr[VNET_HDR_LEN..]);
    assert_eq!(&got[10..12], &1u16.to_le_bytes());
}

/// A copied frame goes into the guest in one piece where the chain's first buffer (the one
/// the frame's head goes to) runs straight on into the next, and in pieces where it does
/// not: either way it arrives whole.
#[test]
fn rx_copied_frame_arrives_whole_in_adjacent_and_apart_buffers() {
    let mut f = fixture();
    // The device's head is the virtio header and the headers the stages read.
    let head = (VNET_HDR_LEN + devices::virtio::net::headers::HEADER_BYTES) as u32;
    let (adjacent, apart) = (SCRATCH, SCRATCH + 0x10_000);
    f.driver.add_chain(
        RXQ,
        40,
        &[
            (adjacent, head, true),
            (adjacent + u64::from(head), 2000, true),
        ],
    );
    f.driver.add_chain(
        RXQ,
        50,
        &[(apart, head, true), (apart + 0x4000, 2000, true)],
    );
    f.driver.kick(RXQ);
    let frames = [frame(1000, 7), frame(1000, 8)];
    for fr in &frames {
        f.peer.send(fr).expect("inject");
    }
    f.pump();
    let len = frames[0].len() as u32;
    assert_eq!(f.driver.take_used(RXQ), vec![(40, len), (50, len)]);
    let one = f.driver.read_mem(adjacent, frames[0].len());
    let mut two = f.driver.read_mem(apart, head as usize);
    two.extend(
        f.driver
            .read_mem(apart + 0x4000, frames[1].len() - head as usize),
    );
    for (got, fr) in [(one, &frames[0]), (two, &frames[1])] {
        assert_eq!(&got[VNET_HDR_LEN..], &fr[VNET_HDR_LEN..]);
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
    }
}

/// Small frames are copied from the device's own buffer, large ones read straight into the
/// guest's (the choice follows the last frame's size, `rx_read.rs`): frames of both kinds in
/// every order arrive whole, and one longer than the guest's buffer is dropped either way.
#[test]
fn rx_frames_small_and_large_in_turn_arrive_whole() {
    let mut f = fixture();
    let sizes = [
        60, 6_000, 60, 3_000, 1_400, 9_000, 100, 12_000, 50, 2_036, 2_037, 12_000, 70,
    ];
    f.post_rx(sizes.len(), 10_000);
    let mut dropped = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let fr = frame(len, i as u8);
        f.peer.send(&fr).expect("inject");
        f.pump();
        let used = f.driver.take_used(RXQ);
        assert_eq!(used.len(), 1, "frame {i} ({len} bytes): one chain back");
        let (id, written) = used[0];
        if fr.len() > 10_000 {
            assert_eq!(
                written, 0,
                "frame {i} ({len} bytes) is longer than the buffer"
            );
            dropped += 1;
            continue;
        }
        assert_eq!(written as usize, fr.len(), "frame {i} ({len} bytes)");
        let got = f
            .driver
            .read_mem(GuestDriver::slot_addr(RXQ, id as u16), fr.len());
        assert_eq!(
            &got[VNET_HDR_LEN..],
            &fr[VNET_HDR_LEN..],
            "frame {i} ({len} bytes)"
        );
        assert_eq!(&got[10..12], &1u16.to_le_bytes(), "num_buffers");
    }
    assert_eq!(f.snap().rx_dropped, dropped);
    assert_eq!(f.snap().rx_packets, sizes.len() as u64 - dropped);
}

/// A frame longer than the largest the device takes (virtio header + 64 KiB + Ethernet and
/// VLAN headers) is refused even in a chain that would hold it, and the largest arrives
/// whole, whichever way each is read (after a small frame: into the device's buffer; after a
/// large one: `readv` into the chain).
#[test]
fn rx_frame_longer_than_the_device_takes_is_refused_even_in_a_larger_chain() {
    let mut f = fixture();
    let (max, over) = (MAX_FRAME_LEN, MAX_FRAME_LEN + 1);
    // Read: into the buffer, buffer, readv, buffer, buffer, readv, readv.
    let sizes = [60, max, 60, 60, over, max, over];
    for (id, &len) in sizes.iter().enumerate() {
        let at = SCRATCH + id as u64 * 0x2_0000;
        f.driver.add_chain(
            RXQ,
            id as u16,
            &[(at, 40_000, true), (at + 0x1_0000, 40_000, true)],
        );
        f.driver.kick(RXQ);
        let fr = frame(len, id as u8);
        f.peer.send(&fr).expect("inject");
        f.pump();
        let want = if len == over { 0 } else { fr.len() as u32 };
        assert_eq!(
            f.driver.take_used(RXQ),
            [(id as u32, want)],
            "frame {id}, {len} bytes"
        );
        if len == max {
            let mut got = f.driver.read_mem(at, 40_000);
            got.extend(f.driver.read_mem(at + 0x1_0000, fr.len() - 40_000));
            assert_eq!(&got[VNET_HDR_LEN..], &fr[VNET_HDR_LEN..], "frame {id}");
        }
    }
    assert_eq!((f.snap().rx_packets, f.snap().rx_dropped), (5, 2));
}

#[test]
fn rx_buffer_too_small_drops_only_that_frame() {
    let mut f = fixture();
    f.post_rx(1, 100);
    f.peer.send(&frame(1500, 1)).expect("inject");
    f.pump();
    assert_eq!(
        f.driver.take_used(RXQ),
        vec![(0, 0)],
        "chain returned empty"
    );
    assert_eq!(f.snap().rx_dropped, 1);
    assert_eq!(f.snap().malformed_chains, 0);
    f.assert_still_works();
}

#[test]
fn short_and_empty_tx_frames_are_dropped() {
    let mut f = fixture();
    f.send(&[0u8; 20]);
    f.driver.add_chain(TXQ, 50, &[(SCRATCH, 0, false)]);
    f.driver.kick(TXQ);
    f.pump();
    assert_eq!(f.snap().tx_dropped, 2);
    assert!(f.recv_peer().is_none());
    f.assert_still_works();
}
