//! The MMIO transport's validation (virtio 1.2 section 4.2.2), with a net device behind it.

use devices::virtio::test_utils::MEM_SIZE;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::fixture::*;

fn fresh() -> (GuestDriver, EventManager<Dev>) {
    let (backend, _peer) = DgramBackend::pair();
    let dev: Dev = Arc::new(Mutex::new(
        NetDevice::new(backend, MAC, Stages::default()).expect("device"),
    ));
    let mut em = EventManager::<Dev>::new().expect("em");
    em.add_subscriber(dev.clone());
    (GuestDriver::new(dev), em)
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
fn a_ring_across_two_memory_regions_fails_activation() {
    let (backend, _peer) = DgramBackend::pair();
    let dev: Dev = Arc::new(Mutex::new(
        NetDevice::new(backend, MAC, Stages::default()).expect("device"),
    ));
    // Queue 0's descriptor table (0x10000, 4 KiB for 256 entries) straddles 0x10800: all of
    // it is guest memory, but not one mapping.
    let split = 0x1_0800;
    let mem = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), split),
        (GuestAddress(split as u64), MEM_SIZE - split),
    ])
    .expect("memory");
    let mut d = GuestDriver::with_memory(dev, mem);
    d.negotiate(FEATURES);
    d.setup_queue(0, 256);
    d.setup_queue(1, 256);
    let s = d.driver_ok();
    assert_eq!(s & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    assert_ne!(s & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(count(&d.transport.counters().bad_queue_config), 1);
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
    let s = d.negotiate(FEATURES | feature(VIRTIO_NET_F_CSUM_BIT));
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

/// Checksum offload: not offered on a backend without offloads.
const VIRTIO_NET_F_CSUM_BIT: u32 = virtio_bindings::virtio_net::VIRTIO_NET_F_CSUM;

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
    devices::BusDevice::read(&mut d.transport, 0, &mut one);
    assert_eq!(one, [0]);
    devices::BusDevice::write(&mut d.transport, 0x70, &[1, 0]);
    devices::BusDevice::write(&mut d.transport, 0x71, &[1, 0, 0, 0]);
    assert_eq!(d.read_reg(0xf0), 0);
    assert_eq!(d.status(), 0);
    assert_eq!(count(&d.transport.counters().bad_register_access), 4);
}
