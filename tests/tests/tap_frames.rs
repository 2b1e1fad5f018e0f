//! The virtio-net device on a real TAP (MTU 1 500) in a namespace this test creates, driven by
//! the guest-driver harness: what the host kernel receives from frames longer than the link,
//! from virtio headers with offload fields the driver never negotiated, and what the audit
//! records when the TAP refuses a write.

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::virtio::feature;
use devices::virtio::net::{MacAddr, NetDevice, Stages, Tap, QUEUE_SIZE, TX_QUEUE};
use devices::virtio::test_utils::{recorded, AuditSeen, GuestDriver};
use e2e::netns::NetNs;
use event_manager::{EventManager, SubscriberOps};
use packet::{Direction, Verdict};

const TAP: &str = "svfr0";
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x79, 1];
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x79, 2];
const HOST_IP: [u8; 4] = [10, 79, 0, 1];
const GUEST_IP: [u8; 4] = [10, 79, 0, 2];
const PORT: u16 = 5000;
/// virtio 1.2 section 5.1.3: VIRTIO_F_VERSION_1 is bit 32, VIRTIO_NET_F_MAC bit 5.
const FEATURES: u64 = feature(32) | feature(5);

type Dev = Arc<Mutex<NetDevice<Tap>>>;

/// RFC 1071 checksum of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// virtio header `hdr`, then an Ethernet/IPv4 frame of `len` bytes, protocol `proto`, from
/// the guest to the host's port [`PORT`] (UDP without a checksum, RFC 768; or TCP ACK).
fn frame(hdr: [u8; 12], len: usize, proto: u8) -> Vec<u8> {
    let mut f = hdr.to_vec();
    f.extend_from_slice(&HOST_MAC);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = u16::try_from(len - 14).expect("IPv4 total length");
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&GUEST_IP);
    ip.extend_from_slice(&HOST_IP);
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    if proto == 17 {
        f.extend_from_slice(&(ip_len - 20).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    } else {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    }
    f.resize(12 + len, 0x5a);
    f
}

/// `virtio_net_hdr_v1` (virtio 1.2 section 5.1.6): flags, gso_type, hdr_len, gso_size,
/// csum_start, csum_offset.
fn header(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&54u16.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

/// The TAP's received packets as the host counts them (`ip -s -j link`).
fn tap_rx_packets(ns: &NetNs) -> u64 {
    let out = ns
        .command("ip")
        .args(["-s", "-j", "link", "show", TAP])
        .output()
        .expect("ip");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

struct Guest {
    driver: GuestDriver,
    em: EventManager<Dev>,
}

impl Guest {
    fn send(&mut self, bytes: &[u8]) {
        let q = TX_QUEUE as u16;
        self.driver.add_buffer(q, Some(bytes), 0);
        self.driver.kick(q);
        while self.em.run_with_timeout(50).expect("event loop") > 0 {}
    }
}

fn ip(ns: &NetNs, args: &[&str]) {
    let out = ns.command("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

#[test]
fn the_host_receives_no_frame_longer_than_the_link_and_no_unnegotiated_offload() {
    let ns = NetNs::new("svtapfr");
    ip(&ns, &["tuntap", "add", "dev", TAP, "mode", "tap"]);
    ip(&ns, &["link", "set", TAP, "address", "02:00:00:00:79:01"]);
    ip(&ns, &["addr", "add", "10.79.0.1/24", "dev", TAP]);
    ip(&ns, &["link", "set", TAP, "up"]);
    let name = ns.name().to_string();
    let (audit, seen) = recorded();
    let (sock, mut guest, counters) = ns.run_in(move || {
        let sock = UdpSocket::bind(("10.79.0.1", PORT)).expect("bind in the namespace");
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let tap = Tap::open(TAP).expect("open the TAP");
        assert_eq!(tap.mtu().expect("SIOCGIFMTU"), 1500, "in {name}");
        let stages = Stages {
            audit: Some(audit),
            ..Stages::default()
        };
        let dev: Dev = Arc::new(Mutex::new(
            NetDevice::new(tap, MacAddr(GUEST_MAC), stages).expect("device"),
        ));
        let counters = dev.lock().expect("dev").counters();
        let mut em = EventManager::<Dev>::new().expect("event manager");
        em.add_subscriber(dev.clone());
        let mut driver = GuestDriver::new(dev);
        driver.init(FEATURES, 2, QUEUE_SIZE);
        while em.run_with_timeout(0).expect("event loop") > 0 {}
        (sock, Guest { driver, em }, counters)
    });
    let datagram = |sock: &UdpSocket| {
        let mut buf = vec![0u8; 4096];
        sock.recv(&mut buf).ok()
    };
    // The longest frame the link carries: a 1 500-byte IP packet, 1 472 bytes of UDP data.
    guest.send(&frame([0; 12], 1514, 17));
    assert_eq!(datagram(&sock), Some(1472));
    // The report's 3 054-byte frames: plain UDP, and TCP under NEEDS_CSUM + TCPV4 GSO
    // (gso_size 1 000, csum_start 34, csum_offset 16). Neither reaches the host.
    let before = tap_rx_packets(&ns);
    guest.send(&frame([0; 12], 3054, 17));
    guest.send(&frame(header(1, 1, 1000, 34, 16), 3054, 6));
    assert_eq!(datagram(&sock), None, "no 3 012-byte datagram");
    assert_eq!(tap_rx_packets(&ns), before, "the host received neither");
    // The headers the kernel refused with EINVAL (TCPV4 with gso_size 0; NEEDS_CSUM at
    // 60 000): the fields are cleared, the frames are plain frames and arrive.
    guest.send(&frame(header(0, 1, 0, 0, 0), 1514, 17));
    assert_eq!(datagram(&sock), Some(1472));
    guest.send(&frame(header(1, 0, 0, 60_000, 0), 1514, 17));
    assert_eq!(datagram(&sock), Some(1472));
    // A TAP that is down refuses writes (EIO): the frame is dropped-backend, not forwarded.
    ip(&ns, &["link", "set", TAP, "down"]);
    guest.send(&frame([0; 12], 100, 17));
    let s = counters.snapshot();
    assert_eq!(s.tx_header_fields_cleared, 3);
    assert_eq!((s.tx_packets, s.tx_dropped, s.tx_backend_errors), (3, 3, 1));
    let tx = |v| (Direction::Tx, v);
    assert_eq!(
        AuditSeen::verdicts(&seen),
        [
            tx(Verdict::Forwarded),
            tx(Verdict::DroppedMalformed),
            tx(Verdict::DroppedMalformed),
            tx(Verdict::Forwarded),
            tx(Verdict::Forwarded),
            tx(Verdict::DroppedBackend),
        ]
    );
    // The oversize frames' flows name their sender (the headers are read all the same).
    drop(guest);
    let seen = seen.lock().expect("seen");
    let oversize: Vec<_> = seen
        .flows
        .iter()
        .filter(|(k, _)| k.verdict == Verdict::DroppedMalformed)
        .collect();
    assert_eq!(oversize.len(), 2, "{oversize:?}");
    for (k, stats) in oversize {
        assert_eq!(k.src, Some(std::net::IpAddr::from(GUEST_IP)), "{k:?}");
        assert_eq!((k.dst_port, stats.bytes), (PORT, 3054), "{k:?}");
    }
}
