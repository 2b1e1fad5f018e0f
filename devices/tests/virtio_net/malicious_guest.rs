//! A malicious or broken guest: loops, over-long and broken chains, bad indirect tables,
//! addresses outside memory, wrong-direction descriptors, ring index jumps, notify storms.

use crate::fixture::*;

#[test]
fn descriptor_loop_is_dropped_and_counted() {
    let mut f = fixture();
    f.driver.write_desc(
        TXQ,
        5,
        RawDesc {
            addr: SCRATCH,
            len: 64,
            flags: VRING_DESC_F_NEXT as u16,
            next: 6,
        },
    );
    f.driver.write_desc(
        TXQ,
        6,
        RawDesc {
            addr: SCRATCH,
            len: 64,
            flags: VRING_DESC_F_NEXT as u16,
            next: 5,
        },
    );
    f.driver.publish(TXQ, 5);
    f.driver.kick(TXQ);
    f.pump();
    assert_eq!(f.snap().malformed_chains, 1);
    assert_eq!(f.snap().tx_dropped, 1);
    f.assert_still_works();
}

#[test]
fn chain_longer_than_the_queue_is_dropped() {
    let mut f = fixture();
    let descs: Vec<(u64, u32, bool)> = (0..QUEUE_SIZE).map(|_| (SCRATCH, 16, false)).collect();
    f.driver.add_chain(TXQ, 0, &descs);
    // Make the last descriptor continue, so the chain would exceed the table.
    f.driver.write_desc(
        TXQ,
        QUEUE_SIZE - 1,
        RawDesc {
            addr: SCRATCH,
            len: 16,
            flags: VRING_DESC_F_NEXT as u16,
            next: 0,
        },
    );
    f.driver.kick(TXQ);
    f.pump();
    assert_eq!(f.snap().malformed_chains, 1);
    f.assert_still_works();
}

#[test]
fn next_index_past_the_table_is_dropped() {
    let mut f = fixture();
    f.driver.write_desc(
        TXQ,
        3,
        RawDesc {
            addr: SCRATCH,
            len: 64,
            flags: VRING_DESC_F_NEXT as u16,
            next: 999,
        },
    );
    f.driver.publish(TXQ, 3);
    f.driver.kick(TXQ);
    f.pump();
    assert_eq!(f.snap().malformed_chains, 1);
    f.assert_still_works();
}

#[test]
fn indirect_tables_with_bad_sizes_or_addresses_are_dropped() {
    let mut f = fixture();
    let table = SCRATCH + 0x10_000;
    f.driver.write_raw_desc(
        table,
        RawDesc {
            addr: SCRATCH,
            len: 64,
            flags: 0,
            next: 0,
        },
    );
    let bad = [
        (table, 17u32),         // not a multiple of 16
        (table, 0),             // empty
        (0xffff_ffff_0000, 16), // outside guest memory
    ];
    for (i, (addr, len)) in bad.iter().enumerate() {
        let head = 20 + i as u16;
        f.driver.write_desc(
            TXQ,
            head,
            RawDesc {
                addr: *addr,
                len: *len,
                flags: VRING_DESC_F_INDIRECT as u16,
                next: 0,
            },
        );
        f.driver.publish(TXQ, head);
    }
    f.driver.kick(TXQ);
    f.pump();
    assert_eq!(f.snap().malformed_chains, 3);
    assert_eq!(f.driver.take_used(TXQ).len(), 3);
    f.assert_still_works();
}

#[test]
fn buffers_outside_guest_memory_are_dropped() {
    let mut f = fixture();
    f.driver.write_desc(
        TXQ,
        7,
        RawDesc {
            addr: 0x7fff_0000_0000,
            len: 100,
            flags: 0,
            next: 0,
        },
    );
    f.driver.publish(TXQ, 7);
    f.driver.write_desc(
        TXQ,
        8,
        RawDesc {
            addr: (64 << 20) - 10,
            len: 100,
            flags: 0,
            next: 0,
        },
    );
    f.driver.publish(TXQ, 8);
    f.driver.kick(TXQ);
    // RX into memory that does not exist.
    f.driver.write_desc(
        RXQ,
        0,
        RawDesc {
            addr: u64::MAX - 50,
            len: 2048,
            flags: 2,
            next: 0,
        },
    );
    f.driver.publish(RXQ, 0);
    f.driver.kick(RXQ);
    f.pump();
    f.peer.send(&frame(100, 1)).expect("inject");
    f.pump();
    let s = f.snap();
    assert_eq!(s.malformed_chains, 3);
    // The unusable RX chain is returned empty; the frame waits for a usable buffer.
    assert_eq!(s.rx_dropped, 0);
    assert_eq!(f.driver.take_used(RXQ), vec![(0, 0)]);
    f.assert_still_works();
}

#[test]
fn read_only_rx_and_writable_tx_descriptors_are_refused() {
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
    f.peer.send(&frame(100, 1)).expect("inject");
    f.driver.write_desc(
        TXQ,
        0,
        RawDesc {
            addr: SCRATCH,
            len: 100,
            flags: 2,
            next: 0,
        },
    );
    f.driver.publish(TXQ, 0);
    f.driver.kick(TXQ);
    f.pump();
    let s = f.snap();
    assert_eq!(s.malformed_chains, 2);
    assert_eq!((s.rx_dropped, s.tx_dropped), (0, 1));
    assert!(f.recv_peer().is_none());
    f.assert_still_works();
}

#[test]
fn avail_index_jump_needs_reset_and_reset_recovers() {
    let mut f = fixture();
    f.driver.set_avail_idx(TXQ, QUEUE_SIZE + 10);
    f.driver.kick(TXQ);
    f.pump();
    assert_ne!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(f.snap().needs_reset, 1);
    assert_eq!(
        f.driver.read_reg(VIRTIO_MMIO_INTERRUPT_STATUS) & 2,
        2,
        "config interrupt"
    );
    // The driver resets and starts over: the device works again.
    f.driver.init(FEATURES, 2, QUEUE_SIZE);
    f.pump();
    assert_eq!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    f.assert_still_works();
}

#[test]
fn avail_entry_past_the_descriptor_table_needs_reset_on_either_queue() {
    for q in [TXQ, RXQ] {
        let mut f = fixture();
        // The chains sent before it still reach the driver.
        if q == TXQ {
            f.driver.add_buffer(TXQ, Some(&frame(60, 1)), 0);
        }
        f.driver.publish(q, QUEUE_SIZE);
        f.driver.kick(q);
        f.pump();
        assert_ne!(f.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "queue {q}");
        assert_eq!(f.snap().needs_reset, 1);
        if q == TXQ {
            assert_eq!(f.driver.take_used(TXQ).len(), 1);
            assert_eq!(f.recv_peer(), Some(frame(60, 1)));
        }
        f.driver.init(FEATURES, 2, QUEUE_SIZE);
        f.pump();
        f.assert_still_works();
    }
}

#[test]
fn notify_storm_is_harmless() {
    let mut f = fixture();
    for _ in 0..10_000 {
        f.driver.kick(TXQ);
        f.driver.kick(RXQ);
        f.driver.kick(7); // no such queue
    }
    f.pump();
    let s = f.snap();
    assert_eq!((s.tx_packets, s.malformed_chains, s.tx_dropped), (0, 0, 0));
    assert_eq!(
        f.driver
            .transport
            .counters()
            .bad_register_access
            .load(std::sync::atomic::Ordering::Relaxed),
        10_000
    );
    f.assert_still_works();
}
