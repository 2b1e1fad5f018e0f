// Shared set-up: a virtio-net device on a datagram backend behind the MMIO transport, driven
// by the guest-driver harness, with its event loop. With `stages`, anti-spoofing and the audit
// stage are on, so fuzzed frames go through the header parser and the flow table too; without,
// more of them reach the backend write.

// Shared by both targets; each uses part of it.
#![allow(dead_code)]

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
    pub mac: [u8; 6],
}

/// TPIDs the header parser reads through (802.1Q, 802.1ad, pre-standard QinQ).
const TPIDS: [u16; 5] = [0x8100, 0x88a8, 0x9100, 0x9200, 0x9300];
/// EtherTypes: IPv4, ARP, IPv6, and some a sliver may not send (LLDP, MPLS, PPPoE).
const ETHERTYPES: [u16; 6] = [0x0800, 0x0806, 0x86dd, 0x88cc, 0x8847, 0x8863];

/// A frame shaped from `bytes`: 12 bytes of virtio header as given (flags, gso_type, ...),
/// a destination MAC, `mac` as the source, 0-4 VLAN tags, a known EtherType, then the rest.
pub fn shaped_frame(bytes: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let byte = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let mut f: Vec<u8> = (0..18).map(byte).collect(); // virtio header, destination MAC
    f.extend_from_slice(&mac);
    let pick = byte(18);
    let tags = usize::from(pick % 5);
    for i in 0..tags {
        let tpid = TPIDS[usize::from(byte(19 + i)) % TPIDS.len()];
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&[0, 1]);
    }
    let ethertype = ETHERTYPES[usize::from(pick >> 4) % ETHERTYPES.len()];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(bytes.get(19 + tags..).unwrap_or(&[]));
    f
}

impl Rig {
    pub fn new(stages: bool, mtu: bool) -> Self {
        let (mut backend, peer) = DgramBackend::pair();
        backend.mtu = mtu.then_some(1500);
        let mac = MacAddr::local(1);
        let stages = if !stages {
            Stages::default()
        } else {
            Stages {
                shaper: None,
                anti_spoofing: Some(AntiSpoofing {
                    mac: mac.0,
                    ipv4: Some([10, 0, 0, 2].into()),
                    deny_dst: vec!["10.0.0.1/32".parse().expect("net")],
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
            mac: mac.0,
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
