//! A virtio-net device on a datagram socket pair, driven by the guest-driver harness, and
//! what the tests need around it.

pub use std::sync::{Arc, Mutex};

pub use devices::virtio::feature;
pub use devices::virtio::net::*;
pub use devices::virtio::test_utils::{
    recorded, AuditSeen, DgramBackend, GuestDriver, RawDesc, SCRATCH,
};
pub use event_manager::{EventManager, SubscriberOps};
pub use std::os::unix::net::UnixDatagram;
pub use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
pub use virtio_bindings::virtio_mmio::*;
pub use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
pub use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};

/// The device under test, as the event loop and the harness share it.
pub type Dev = Arc<Mutex<NetDevice<DgramBackend>>>;

/// What the device offers and the tests' driver accepts.
pub const FEATURES: u64 = feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MAC);
/// The receive queue's index.
pub const RXQ: u16 = RX_QUEUE as u16;
/// The transmit queue's index.
pub const TXQ: u16 = TX_QUEUE as u16;
/// The device's MAC.
pub const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x42]);

/// A device set up by the harness's driver, the other end of its backend, and its loop.
pub struct Fixture {
    /// The guest's side.
    pub driver: GuestDriver,
    /// The host's side of the backend.
    pub peer: UnixDatagram,
    /// The device's event loop.
    pub em: EventManager<Dev>,
    /// The device's counters.
    pub counters: Arc<NetCounters>,
}

/// A virtio header without offloads, then `len` bytes counting up from `fill`.
pub fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
    f
}

/// A device running `stages` besides the frame checks, activated by the driver.
pub fn fixture_with(stages: Stages) -> Fixture {
    fixture_on(None, stages)
}

/// [`fixture_with`] on a backend that reports MTU `mtu`, as a TAP does.
pub fn fixture_on(mtu: Option<usize>, stages: Stages) -> Fixture {
    fixture_negotiating(FEATURES, mtu, stages)
}

/// [`fixture_on`] with the driver accepting `features`.
pub fn fixture_negotiating(features: u64, mtu: Option<usize>, stages: Stages) -> Fixture {
    let (mut backend, peer) = DgramBackend::pair();
    backend.mtu = mtu;
    let device = NetDevice::new(backend, MAC, stages).expect("device");
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
    f.driver.init(features, 2, QUEUE_SIZE);
    f.pump();
    f
}

/// A device with no optional stages.
pub fn fixture() -> Fixture {
    fixture_with(Stages::default())
}

impl Fixture {
    /// Let the device handle everything pending.
    pub fn pump(&mut self) {
        while self.em.run_with_timeout(0).expect("event loop") > 0 {}
    }

    /// The guest sends `bytes` (virtio header + frame) in one descriptor.
    pub fn send(&mut self, bytes: &[u8]) {
        self.driver.add_buffer(TXQ, Some(bytes), 0);
        self.driver.kick(TXQ);
        self.pump();
    }

    /// The next frame the device wrote to the backend, if any.
    pub fn recv_peer(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; FRAME_BUF_LEN];
        self.peer.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    /// The guest posts `n` receive buffers of `len` bytes.
    pub fn post_rx(&mut self, n: usize, len: u32) {
        for _ in 0..n {
            self.driver.add_buffer(RXQ, None, len);
        }
        self.driver.kick(RXQ);
        self.pump();
    }

    /// The device's counters now.
    pub fn snap(&self) -> NetCountersSnapshot {
        self.counters.snapshot()
    }

    /// The device status register.
    pub fn status(&mut self) -> u32 {
        self.driver.status()
    }

    /// The device still moves traffic both ways after whatever the test did.
    pub fn assert_still_works(&mut self) {
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

/// Read an atomic counter.
pub fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}
