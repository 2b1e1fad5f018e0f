//! virtio-net device tests through the guest-driver harness: the happy paths, backpressure,
//! and a malicious guest.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};

use super::*;

mod shaper;
use crate::virtio::feature;
use crate::virtio::test_utils::{DgramBackend, GuestDriver, RawDesc, SCRATCH};

type Dev = Arc<Mutex<NetDevice<DgramBackend>>>;

const FEATURES: u64 = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MAC);
const RXQ: u16 = RX_QUEUE as u16;
const TXQ: u16 = TX_QUEUE as u16;
const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x42]);

struct Fixture {
    driver: GuestDriver,
    peer: UnixDatagram,
    em: EventManager<Dev>,
    counters: Arc<NetCounters>,
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN]; // virtio header: no offloads
    f.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
    f
}

fn fixture_with(policy: Box<dyn PacketPolicy>) -> Fixture {
    fixture_full(policy, None)
}

fn fixture_full(policy: Box<dyn PacketPolicy>, shaper: Option<Arc<Shaper>>) -> Fixture {
    let (backend, peer) = DgramBackend::pair();
    let mut device = NetDevice::new(backend, MAC, policy).expect("device");
    if let Some(shaper) = shaper {
        device.set_shaper(shaper);
    }
    let dev: Dev = Arc::new(Mutex::new(device));
    let counters = dev.lock().expect("dev").counters();
    let mut em = EventManager::<Dev>::new().expect("event manager");
    em.add_subscriber(dev.clone());
    let driver = GuestDriver::new(dev);
    let mut f = Fixture {
        driver,
        peer,
        em,
        counters,
    };
    f.driver.init(FEATURES, 2, QUEUE_SIZE);
    f.pump();
    f
}

fn fixture() -> Fixture {
    fixture_with(Box::new(ForwardAll))
}

impl Fixture {
    /// Let the device handle everything pending.
    fn pump(&mut self) {
        while self.em.run_with_timeout(0).expect("event loop") > 0 {}
    }

    fn send(&mut self, bytes: &[u8]) {
        self.driver.add_buffer(TXQ, Some(bytes), 0);
        self.driver.kick(TXQ);
        self.pump();
    }

    fn recv_peer(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; FRAME_BUF_LEN];
        self.peer.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            self.driver.add_buffer(RXQ, None, len);
        }
        self.driver.kick(RXQ);
        self.pump();
    }

    fn snap(&self) -> NetCountersSnapshot {
        self.counters.snapshot()
    }

    fn status(&mut self) -> u32 {
        self.driver.status()
    }

    /// The device still moves traffic both ways after whatever the test did.
    fn assert_still_works(&mut self) {
        let before = self.snap();
        let f = frame(100, 9);
        self.send(&f);
        assert_eq!(
            self.recv_peer().as_deref(),
            Some(f.as_slice()),
            "TX after abuse"
        );
        self.post_rx(1, 2048);
        self.peer.send(&frame(60, 3)).expect("inject");
        self.pump();
        let after = self.snap();
        assert_eq!(after.tx_packets, before.tx_packets + 1);
        assert_eq!(after.rx_packets, before.rx_packets + 1);
    }
}

#[test]
fn handshake_offers_version_1_and_mac() {
    let mut f = fixture();
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_MAGIC_VALUE), 0x7472_6976);
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(f.driver.read_reg(VIRTIO_MMIO_DEVICE_ID), 1);
    assert_eq!(f.driver.device_features(), FEATURES);
    assert_ne!(f.status() & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    let mac: Vec<u8> = (0..6)
        .map(|i| {
            let mut b = [0u8; 1];
            crate::bus_device::BusDevice::read(&mut f.driver.transport, 0x100 + i, &mut b);
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
fn policy_drops_are_counted() {
    struct DropTx;
    impl PacketPolicy for DropTx {
        fn on_tx(&mut self, _headers: &[u8], _len: usize) -> Verdict {
            Verdict::Drop
        }
        fn on_rx(&mut self, _headers: &[u8], _len: usize) -> Verdict {
            Verdict::Forward
        }
    }
    let mut f = fixture_with(Box::new(DropTx));
    f.send(&frame(100, 1));
    assert!(f.recv_peer().is_none());
    assert_eq!((f.snap().tx_dropped, f.snap().tx_packets), (1, 0));
    assert_eq!(
        f.driver.take_used(TXQ).len(),
        1,
        "dropped chains still go back"
    );
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

// ---- a malicious guest ----

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

// ---- transport validation ----

fn fresh() -> (GuestDriver, EventManager<Dev>) {
    let (backend, _peer) = DgramBackend::pair();
    let dev: Dev = Arc::new(Mutex::new(
        NetDevice::new(backend, MAC, Box::new(ForwardAll)).expect("device"),
    ));
    let mut em = EventManager::<Dev>::new().expect("em");
    em.add_subscriber(dev.clone());
    (GuestDriver::new(dev), em)
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn invalid_queue_sizes_are_refused() {
    let (mut d, _em) = fresh();
    d.negotiate(FEATURES);
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    for size in [0u32, 3, 100, 512, 70_000] {
        d.write_reg(VIRTIO_MMIO_QUEUE_NUM, size);
    }
    assert_eq!(count(&d.transport.counters().bad_queue_config), 5);
}

#[test]
fn queue_enabled_before_its_addresses_needs_reset() {
    let (mut d, _em) = fresh();
    d.negotiate(FEATURES);
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    d.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
    assert_ne!(d.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(d.read_reg(VIRTIO_MMIO_QUEUE_READY), 0);
    assert_eq!(count(&d.transport.counters().needs_reset), 1);
}

#[test]
fn driver_ok_with_queues_missing_needs_reset() {
    let (mut d, _em) = fresh();
    d.negotiate(FEATURES);
    d.setup_queue(0, 256); // TX queue never set up
    let s = d.driver_ok();
    assert_eq!(s & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    assert_ne!(s & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn feature_negotiation_refuses_unoffered_and_legacy() {
    let (mut d, _em) = fresh();
    let s = d.negotiate(FEATURES | feature(VIRTIO_NET_F_MRG_RXBUF_BIT));
    assert_eq!(
        s & VIRTIO_CONFIG_S_FEATURES_OK,
        0,
        "unoffered feature accepted"
    );
    let s = d.negotiate(feature(VIRTIO_NET_F_MAC));
    assert_eq!(s & VIRTIO_CONFIG_S_FEATURES_OK, 0, "legacy driver accepted");
    let s = d.negotiate(FEATURES);
    assert_ne!(s & VIRTIO_CONFIG_S_FEATURES_OK, 0);
}

const VIRTIO_NET_F_MRG_RXBUF_BIT: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

#[test]
fn out_of_order_status_and_late_queue_writes_are_refused() {
    let (mut d, _em) = fresh();
    d.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_DRIVER_OK);
    assert_eq!(d.status(), 0);
    d.init(FEATURES, 2, 256);
    let before = count(&d.transport.counters().bad_state_transition);
    d.write_reg(VIRTIO_MMIO_QUEUE_SEL, 0);
    d.write_reg(VIRTIO_MMIO_QUEUE_NUM, 64);
    d.write_reg(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1234);
    assert_eq!(
        count(&d.transport.counters().bad_state_transition),
        before + 2
    );
}

#[test]
fn odd_width_and_unknown_register_accesses_are_counted() {
    let (mut d, _em) = fresh();
    let mut one = [0xffu8; 1];
    crate::bus_device::BusDevice::read(&mut d.transport, 0, &mut one);
    assert_eq!(one, [0]);
    crate::bus_device::BusDevice::write(&mut d.transport, 0x70, &[1, 0]);
    crate::bus_device::BusDevice::write(&mut d.transport, 0x71, &[1, 0, 0, 0]);
    assert_eq!(d.read_reg(0xf0), 0);
    assert_eq!(d.status(), 0);
    assert_eq!(count(&d.transport.counters().bad_register_access), 4);
}
