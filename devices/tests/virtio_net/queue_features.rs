//! VIRTIO_NET_F_MRG_RXBUF (virtio 1.2 section 5.1.6.4: one frame over several RX chains,
//! their count in `num_buffers`) and VIRTIO_RING_F_EVENT_IDX (section 2.7.7/2.7.10:
//! `used_event` at the end of the avail ring, `avail_event` at the end of the used ring).

use vm_memory::{Bytes, GuestAddress};

use crate::fixture::*;

/// Section 5.1.3: VIRTIO_NET_F_MRG_RXBUF is bit 15; section 6: VIRTIO_RING_F_EVENT_IDX 29.
const MRG_RXBUF: u64 = 1 << 15;
const EVENT_IDX: u64 = 1 << 29;

/// Where the harness puts queue `q`'s rings (its `setup_queue`): descriptors, then the avail
/// ring 0x4000 and the used ring 0x8000 after them.
fn rings(q: u16) -> (u64, u64) {
    let desc = 0x1_0000 + u64::from(q) * 0x1_0000;
    (desc + 0x4000, desc + 0x8000)
}

/// The lengths written into used chains `used` (head index, length).
fn lens(used: &[(u32, u32)]) -> Vec<u32> {
    used.iter().map(|&(_, len)| len).collect()
}

/// What the used chains `used` hold, one after the other: the frame they received.
fn received(f: &Fixture, used: &[(u32, u32)]) -> Vec<u8> {
    let mut got = Vec::new();
    for &(id, len) in used {
        let at = GuestDriver::slot_addr(RXQ, id as u16);
        got.extend(f.driver.read_mem(at, len as usize));
    }
    got
}

/// How many interrupts the device raised since the last call.
fn interrupts(f: &Fixture) -> u64 {
    f.driver.irq.eventfd().read().unwrap_or(0)
}

#[test]
fn a_frame_spans_as_many_chains_as_it_needs_and_says_how_many() {
    let mut f = fixture_negotiating(FEATURES | MRG_RXBUF, None, Stages::default());
    f.post_rx(8, 512);
    let fr = frame(1400, 7); // 1 412 bytes with the header: 512 + 512 + 388
    f.peer.send(&fr).expect("inject");
    f.pump();
    let used = f.driver.take_used(RXQ);
    assert_eq!(lens(&used), [512, 512, 388]);
    let got = received(&f, &used);
    assert_eq!(&got[10..12], &3u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &fr[VNET_HDR_LEN..]);
    // The chains the frame did not reach went back: a small frame takes the next one only.
    f.peer.send(&frame(50, 1)).expect("inject");
    f.pump();
    let used = f.driver.take_used(RXQ);
    assert_eq!(used, [(3, 62)]);
    let head = f.driver.read_mem(GuestDriver::slot_addr(RXQ, 3), 12);
    assert_eq!(&head[10..12], &1u16.to_le_bytes());
    let s = f.snap();
    assert_eq!((s.rx_packets, s.rx_bytes, s.rx_dropped), (2, 1450, 0));
}

/// A small frame (read whole into the device's buffer) over chains smaller than the bytes the
/// stages read: its first bytes go into several chains, each at its offset, `num_buffers`
/// in the first.
#[test]
fn a_copied_frame_whose_first_bytes_span_chains_arrives_whole() {
    let mut f = fixture_negotiating(FEATURES | MRG_RXBUF, None, Stages::default());
    f.post_rx(40, 64);
    let fr = frame(300, 9); // 312 bytes with the header: 4 x 64 + 56
    f.peer.send(&fr).expect("inject");
    f.pump();
    let used = f.driver.take_used(RXQ);
    assert_eq!(lens(&used), [64, 64, 64, 64, 56]);
    let got = received(&f, &used);
    assert_eq!(&got[10..12], &5u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &fr[VNET_HDR_LEN..]);
}

/// A frame read whole into the device's buffer that is longer than the largest frame the
/// driver may get (the link's MTU, without GUEST_TSO) is dropped, not waited for, as one read
/// straight into the chains would be; the next frame goes in.
#[test]
fn a_copied_frame_longer_than_the_driver_may_get_is_dropped_not_waited_for() {
    let mut f = fixture_negotiating(FEATURES | MRG_RXBUF, None, Stages::default());
    // A ring of 32-byte buffers: 8 KiB in all, room for the long frame too.
    f.post_rx(usize::from(devices::virtio::net::QUEUE_SIZE), 32);
    f.peer.send(&frame(5000, 1)).expect("inject");
    f.peer.send(&frame(60, 2)).expect("inject");
    f.pump();
    let used = f.driver.take_used(RXQ);
    assert_eq!(
        lens(&used),
        [0, 32, 32, 8],
        "the long frame dropped, the short one in three buffers"
    );
    let s = f.snap();
    assert_eq!((s.rx_dropped, s.rx_packets), (1, 1));
}

/// A frame read whole into the device's buffer (a small one was expected) takes the chains it
/// needs once its length is known: a small frame goes into the first chain at once, whatever
/// the largest frame would need; a larger one than the guest's buffers hold waits in the
/// device's buffer until the guest adds more, and nothing is lost or reordered meanwhile.
#[test]
fn a_copied_frame_takes_the_chains_it_needs_and_waits_for_more() {
    let mut f = fixture_negotiating(FEATURES | MRG_RXBUF, None, Stages::default());
    // 1 024 bytes of buffers: less than a 1 518-byte frame and its header needs.
    f.post_rx(2, 512);
    f.peer.send(&frame(100, 2)).expect("inject");
    f.pump();
    assert_eq!(
        f.driver.take_used(RXQ),
        [(0, 112)],
        "a small frame goes in at once"
    );
    // 1 412 bytes: one 512-byte buffer left, three needed.
    let big = frame(1400, 3);
    f.peer.send(&big).expect("inject");
    f.peer.send(&frame(60, 4)).expect("inject");
    f.pump();
    assert_eq!(f.driver.take_used(RXQ), []);
    assert!(f.snap().rx_no_buffer >= 1);
    // Three more: now they hold it, and it goes first, then the frame after it.
    f.post_rx(3, 512);
    let used = f.driver.take_used(RXQ);
    assert_eq!(lens(&used), [512, 512, 388, 72]);
    let got = received(&f, &used[..3]);
    assert_eq!(&got[10..12], &3u16.to_le_bytes(), "num_buffers");
    assert_eq!(&got[VNET_HDR_LEN..], &big[VNET_HDR_LEN..]);
    let s = f.snap();
    assert_eq!(
        (s.rx_packets, s.rx_bytes, s.rx_dropped),
        (3, 100 + 1400 + 60, 0),
        "nothing lost while waiting, each counted once"
    );
}

#[test]
fn a_mergeable_buffer_smaller_than_a_virtio_header_goes_back_unused() {
    let mut f = fixture_negotiating(FEATURES | MRG_RXBUF, None, Stages::default());
    f.post_rx(1, 8); // virtio 1.2 section 5.1.6.3.1: each buffer holds at least 12 bytes
    f.post_rx(4, 512);
    f.peer.send(&frame(100, 4)).expect("inject");
    f.pump();
    assert_eq!(f.driver.take_used(RXQ), [(0, 0), (1, 112)]);
    let s = f.snap();
    assert_eq!((s.rx_packets, s.malformed_chains), (1, 1));
}

#[test]
fn without_mergeable_buffers_a_frame_needs_one_chain_that_holds_it() {
    let mut f = fixture();
    f.post_rx(4, 512);
    f.peer.send(&frame(1400, 7)).expect("inject");
    f.pump();
    assert_eq!(f.driver.take_used(RXQ), [(0, 0)], "dropped, one chain back");
    assert_eq!(f.snap().rx_dropped, 1);
}

#[test]
fn event_idx_interrupts_only_when_the_used_index_passes_used_event() {
    let mut f = fixture_negotiating(FEATURES | EVENT_IDX, None, Stages::default());
    let (avail, used) = rings(TXQ);
    let used_event = GuestAddress(avail + 4 + 2 * u64::from(QUEUE_SIZE));
    let avail_event = GuestAddress(used + 4 + 8 * u64::from(QUEUE_SIZE));
    interrupts(&f);
    // The driver wants an interrupt once the used index goes past 2.
    f.driver
        .mem
        .write_obj(2u16, used_event)
        .expect("used_event");
    for (i, expect) in [(1u16, 0), (2, 0), (3, 1)] {
        f.send(&frame(60, 1));
        assert_eq!(f.recv_peer().map(|p| p.len()), Some(72));
        assert_eq!(interrupts(&f), expect, "after frame {i}");
        // The device asks to be kicked for the next chain: avail_event = its avail index.
        let asked: u16 = f.driver.mem.read_obj(avail_event).expect("avail_event");
        assert_eq!(asked, i);
    }
    // Without EVENT_IDX, every batch interrupts.
    let mut g = fixture();
    interrupts(&g);
    g.send(&frame(60, 1));
    assert_eq!(interrupts(&g), 1);
}
