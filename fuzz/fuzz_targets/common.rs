// Shared set-up: a virtio-net device on a datagram backend behind the MMIO transport, driven
// by the guest-driver harness, with its event loop.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use devices::virtio::net::{ForwardAll, MacAddr, NetDevice};
use devices::virtio::test_utils::{DgramBackend, GuestDriver};
use event_manager::{EventManager, SubscriberOps};

pub type Dev = Arc<Mutex<NetDevice<DgramBackend>>>;

pub struct Rig {
    pub driver: GuestDriver,
    pub em: EventManager<Dev>,
    pub peer: UnixDatagram,
}

impl Rig {
    pub fn new() -> Self {
        let (backend, peer) = DgramBackend::pair();
        let dev: Dev = Arc::new(Mutex::new(
            NetDevice::new(backend, MacAddr::local(1), Box::new(ForwardAll)).expect("device"),
        ));
        let mut em = EventManager::<Dev>::new().expect("event manager");
        em.add_subscriber(dev.clone());
        Self { driver: GuestDriver::new(dev), em, peer }
    }

    /// Let the device handle what is pending (bounded, so a fuzz input cannot hang us).
    pub fn pump(&mut self) {
        for _ in 0..16 {
            if self.em.run_with_timeout(0).expect("event loop") == 0 {
                break;
            }
        }
        let mut buf = [0u8; 70_000];
        while self.peer.recv(&mut buf).is_ok() {}
    }
}
