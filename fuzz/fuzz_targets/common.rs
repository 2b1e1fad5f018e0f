// Shared set-up: a virtio-net device on a datagram backend behind the MMIO transport, driven
// by the guest-driver harness, with its event loop. With `stages`, anti-spoofing and the audit
// stage are on, so fuzzed frames go through the header parser and the flow table too; without,
// more of them reach the backend write.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use devices::virtio::net::audit::{FlowConfig, FlowKey, FlowSink, FlowStats};
use devices::virtio::net::{AntiSpoofing, AuditSink, AuditStage, MacAddr, NetDevice, Stages};
use devices::virtio::test_utils::{DgramBackend, GuestDriver};
use event_manager::{EventManager, SubscriberOps};
use packet::{Direction, Verdict};

pub type Dev = Arc<Mutex<NetDevice<DgramBackend>>>;

/// Keeps nothing: the audit stage runs, its output goes nowhere.
struct Discard;

impl FlowSink for Discard {
    fn flow(&mut self, _key: &FlowKey, _stats: &FlowStats) {}
}

impl AuditSink for Discard {
    fn capture(&mut self, _ts: u64, _d: Direction, _v: Verdict, _len: usize, _head: &[u8]) {}
}

pub struct Rig {
    pub driver: GuestDriver,
    pub em: EventManager<Dev>,
    pub peer: UnixDatagram,
}

impl Rig {
    pub fn new(stages: bool) -> Self {
        let (backend, peer) = DgramBackend::pair();
        let mac = MacAddr::local(1);
        let stages = if !stages {
            Stages::default()
        } else {
            Stages {
                shaper: None,
                anti_spoofing: Some(AntiSpoofing {
                    mac: mac.0,
                    ipv4: Some([10, 0, 0, 2].into()),
                }),
                audit: Some(AuditStage::new(
                    FlowConfig::default(),
                    Box::new(Discard),
                    true,
                )),
            }
        };
        let dev: Dev = Arc::new(Mutex::new(
            NetDevice::new(backend, mac, stages).expect("device"),
        ));
        let mut em = EventManager::<Dev>::new().expect("event manager");
        em.add_subscriber(dev.clone());
        Self {
            driver: GuestDriver::new(dev),
            em,
            peer,
        }
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
