//! The offloads on a real TAP (MTU 1 500) in a namespace this test creates, driven by the
//! guest-driver harness, for every combination of offload features a driver may negotiate
//! (TX side × RX side × MRG_RXBUF × EVENT_IDX, 64 in all, including none), plus the
//! combinations virtio 1.2 section 5.1.3.1 forbids. What the host kernel makes of each frame
//! is read back from the kernel itself: an AF_PACKET socket with `PACKET_VNET_HDR` shows the
//! virtio header of every frame the TAP hands the host, and injects a 20 000-byte TCP GSO
//! frame that the kernel either passes whole to the device (GUEST_TSO4) or segments and
//! checksums in software first.
//!
//! Header layouts: `struct virtio_net_hdr_v1` (12 bytes, virtio 1.2 section 5.1.6) between
//! device and driver; `struct virtio_net_hdr` (10 bytes, no `num_buffers`) on the packet
//! socket (Linux `include/uapi/linux/virtio_net.h`).

use std::sync::{Arc, Mutex};

use devices::virtio::net::{
    AntiSpoofing, MacAddr, NetDevice, Stages, Tap, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
};
use devices::virtio::test_utils::{recorded, GuestDriver};
use e2e::inject::Injector;
use e2e::netns::NetNs;
use event_manager::{EventManager, SubscriberOps};
use packet::{Direction, Verdict};

const TAP: &str = "svof0";
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x80, 1];
const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x80, 2];
const HOST_IP: [u8; 4] = [10, 80, 0, 1];
const GUEST_IP: [u8; 4] = [10, 80, 0, 2];
/// Not on the link: frames to it are dropped by the host (forwarding is off), answered by
/// nobody.
const NOBODY_IP: [u8; 4] = [10, 80, 0, 9];
/// TCP payload of the GSO frames, and their MSS.
const PAYLOAD: usize = 20_000;
const MSS: u16 = 1448;
/// Ethernet + IPv4 + TCP header bytes of every frame here.
const HDRS: usize = 54;

/// Feature bits, virtio 1.2 section 5.1.3 and section 6.
const VERSION_1: u64 = 1 << 32;
const MAC: u64 = 1 << 5;
const CSUM: u64 = 1 << 0;
const GUEST_CSUM: u64 = 1 << 1;
const GUEST_TSO4: u64 = 1 << 7;
const GUEST_TSO6: u64 = 1 << 8;
const GUEST_ECN: u64 = 1 << 9;
const HOST_TSO4: u64 = 1 << 11;
const HOST_TSO6: u64 = 1 << 12;
const HOST_ECN: u64 = 1 << 13;
const MRG_RXBUF: u64 = 1 << 15;
const EVENT_IDX: u64 = 1 << 29;

/// Header values, virtio 1.2 section 5.1.6.
const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;

type Dev = Arc<Mutex<NetDevice<Tap>>>;

/// RFC 1071: the 16-bit one's complement sum of `bytes` (not complemented), folded.
fn sum16(bytes: &[u8], mut sum: u32) -> u16 {
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// RFC 9293 section 3.1: the TCP pseudo-header's sum (source, destination, zero, protocol 6,
/// TCP length).
fn pseudo(src: [u8; 4], dst: [u8; 4], tcp_len: usize) -> u32 {
    let mut p = Vec::new();
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0, 6]);
    p.extend_from_slice(&(tcp_len as u16).to_be_bytes());
    u32::from(sum16(&p, 0))
}

/// The payload byte at stream offset `i`.
fn payload_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// An Ethernet/IPv4/TCP (ACK|PSH) frame `src` → `dst` with `payload` bytes, its TCP checksum
/// field holding the pseudo-header sum as a sender asking for checksum offload leaves it
/// (the kernel's `tcp_v4_send_check` for CHECKSUM_PARTIAL).
fn tcp_frame(macs: ([u8; 6], [u8; 6]), src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&macs.0);
    f.extend_from_slice(&macs.1);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (20 + 20 + payload) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&ip_len.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]);
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = !sum16(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5001u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    let partial = sum16(&[], pseudo(src, dst, 20 + payload));
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(payload_byte));
    f
}

/// `struct virtio_net_hdr` fields: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset (little-endian here, as virtio 1.x and the x86 packet socket both are).
fn vnet_hdr(flags: u8, gso_type: u8, gso_size: u16) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    h.extend_from_slice(&(HDRS as u16).to_le_bytes());
    h.extend_from_slice(&gso_size.to_le_bytes());
    h.extend_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
    h.extend_from_slice(&16u16.to_le_bytes()); // csum_offset: its checksum field
    h
}

struct Guest {
    driver: GuestDriver,
    em: EventManager<Dev>,
}

impl Guest {
    fn pump(&mut self) {
        while self.em.run_with_timeout(20).expect("event loop") > 0 {}
    }

    fn send(&mut self, bytes: &[u8]) {
        let q = TX_QUEUE as u16;
        self.driver.add_buffer(q, Some(bytes), 0);
        self.driver.kick(q);
        self.pump();
    }

    /// The frames in the RX used ring: (virtio header, frame), joined over `num_buffers`
    /// chains; only this test's TCP frames (to port 5001), not the host's own chatter.
    fn received(&mut self) -> Vec<([u8; 12], Vec<u8>)> {
        let q = RX_QUEUE as u16;
        let used = self.driver.take_used(q);
        let mut out = Vec::new();
        let mut it = used.into_iter();
        while let Some((id, len)) = it.next() {
            let mut bytes = self
                .driver
                .read_mem(GuestDriver::slot_addr(q, id as u16), len as usize);
            assert!(bytes.len() >= 12, "used entry of {len} bytes");
            let count = u16::from_le_bytes([bytes[10], bytes[11]]);
            for _ in 1..count {
                let (id, len) = it.next().expect("num_buffers promised more chains");
                bytes.extend(
                    self.driver
                        .read_mem(GuestDriver::slot_addr(q, id as u16), len as usize),
                );
            }
            let mut hdr = [0u8; 12];
            hdr.copy_from_slice(&bytes[..12]);
            let f = bytes.split_off(12);
            let ours = f.len() > HDRS
                && f[12..14] == [0x08, 0x00]
                && f[23] == 6
                && f[36..38] == 5001u16.to_be_bytes();
            if ours {
                out.push((hdr, f));
            }
        }
        out
    }
}

/// Every subset the driver may take: the TX side, the RX side, MRG_RXBUF, EVENT_IDX.
fn combinations() -> Vec<u64> {
    let tx = [
        0,
        CSUM,
        CSUM | HOST_TSO4,
        CSUM | HOST_TSO4 | HOST_TSO6 | HOST_ECN,
    ];
    let rx = [
        0,
        GUEST_CSUM,
        GUEST_CSUM | GUEST_TSO4,
        GUEST_CSUM | GUEST_TSO4 | GUEST_TSO6 | GUEST_ECN,
    ];
    let mut all = Vec::new();
    for t in tx {
        for r in rx {
            for m in [0, MRG_RXBUF] {
                for e in [0, EVENT_IDX] {
                    all.push(t | r | m | e);
                }
            }
        }
    }
    all
}

#[test]
fn every_offload_combination_reaches_the_host_kernel_as_negotiated() {
    let ns = NetNs::new("svtapof");
    ns.sh(&["ip", "tuntap", "add", "dev", TAP, "mode", "tap"]);
    ns.sh(&["ip", "link", "set", TAP, "address", "02:00:00:00:80:01"]);
    ns.sh(&["ip", "addr", "add", "10.80.0.1/24", "dev", TAP]);
    ns.sh(&["ip", "link", "set", TAP, "up"]);
    let guest_mac = "02:00:00:00:80:02";
    ns.sh(&[
        "ip",
        "neigh",
        "add",
        "10.80.0.2",
        "lladdr",
        guest_mac,
        "dev",
        TAP,
    ]);
    ns.sh(&[
        "sysctl",
        "-qw",
        &format!("net.ipv6.conf.{TAP}.disable_ipv6=1"),
    ]);
    let combos = combinations();
    assert_eq!(combos.len(), 64);
    ns.run_in(move || {
        let sock = Injector::open_with_vnet_hdr(TAP);
        // The forbidden subsets are refused at FEATURES_OK (virtio 1.2 section 2.2.2).
        {
            let tap = Tap::open(TAP).expect("open the TAP");
            let dev: Dev = Arc::new(Mutex::new(
                NetDevice::new(tap, MacAddr(GUEST_MAC), Stages::default()).expect("device"),
            ));
            let mut driver = GuestDriver::new(dev);
            let offered = driver.device_features();
            assert_eq!(
                offered & 0x3fbf,
                CSUM | GUEST_CSUM
                    | GUEST_TSO4
                    | GUEST_TSO6
                    | GUEST_ECN
                    | HOST_TSO4
                    | HOST_TSO6
                    | HOST_ECN
                    | MAC
                    | (1 << 3),
                "offloads, MAC and MTU offered on a TAP: {offered:#x}"
            );
            for bad in [
                GUEST_TSO4,
                HOST_TSO6,
                GUEST_CSUM | GUEST_ECN,
                CSUM | HOST_ECN,
            ] {
                let s = driver.negotiate(VERSION_1 | MAC | bad);
                assert_eq!(s & 8, 0, "FEATURES_OK for {bad:#x}");
            }
        }
        for features in combos {
            check_combination(&sock, VERSION_1 | MAC | features);
        }
    });
}

/// One driver with `features`: a TSO frame and a partly checksummed frame from the guest,
/// then a 20 000-byte GSO frame from the host.
fn check_combination(sock: &Injector, features: u64) {
    let what = format!("features {features:#x}");
    while sock.recv_incoming().is_some() {}
    let tap = Tap::open(TAP).expect("open the TAP");
    let (audit, seen) = recorded();
    let stages = Stages {
        audit: Some(audit),
        anti_spoofing: Some(AntiSpoofing {
            mac: GUEST_MAC,
            ipv4: Some(GUEST_IP.into()),
            deny_dst: Vec::new(),
        }),
        ..Stages::default()
    };
    let dev: Dev = Arc::new(Mutex::new(
        NetDevice::new(tap, MacAddr(GUEST_MAC), stages).expect("device"),
    ));
    let counters = dev.lock().expect("dev").counters();
    let mut em = EventManager::<Dev>::new().expect("event manager");
    em.add_subscriber(dev.clone());
    let mut driver = GuestDriver::new(dev.clone());
    driver.init(features, 2, QUEUE_SIZE);
    let mut guest = Guest { driver, em };
    guest.pump();
    let has = |f: u64| features & f == f;

    // TX: a TSO frame, 20 000 bytes of payload at MSS 1 448.
    let macs = (HOST_MAC, GUEST_MAC);
    let mut gso_frame = vnet_hdr(NEEDS_CSUM, GSO_TCPV4, MSS);
    gso_frame.extend_from_slice(&[0, 0]); // num_buffers
    gso_frame.extend(tcp_frame(macs, GUEST_IP, NOBODY_IP, PAYLOAD));
    guest.send(&gso_frame);
    let got = sock.recv_incoming();
    if has(HOST_TSO4) {
        let got = got.unwrap_or_else(|| panic!("{what}: the TSO frame did not reach the host"));
        assert_eq!(got.len(), 10 + HDRS + PAYLOAD, "{what}");
        assert_eq!(
            (got[0], got[1]),
            (NEEDS_CSUM, GSO_TCPV4),
            "{what}: kernel's header"
        );
        assert_eq!(
            u16::from_le_bytes([got[4], got[5]]),
            MSS,
            "{what}: gso_size"
        );
    } else {
        assert!(
            got.is_none(),
            "{what}: an unnegotiated TSO frame reached the host"
        );
    }
    // TX: one segment asking for checksum offload.
    let mut csum_frame = vnet_hdr(NEEDS_CSUM, 0, 0);
    csum_frame.extend_from_slice(&[0, 0]);
    csum_frame.extend(tcp_frame(macs, GUEST_IP, NOBODY_IP, 1000));
    guest.send(&csum_frame);
    let got = sock
        .recv_incoming()
        .unwrap_or_else(|| panic!("{what}: the 1 054-byte frame did not reach the host"));
    assert_eq!(got.len(), 10 + HDRS + 1000, "{what}");
    if has(CSUM) {
        assert_eq!(got[0], NEEDS_CSUM, "{what}: CHECKSUM_PARTIAL in the kernel");
        assert_eq!(
            u16::from_le_bytes([got[6], got[7]]),
            34,
            "{what}: csum_start"
        );
        assert_eq!(
            u16::from_le_bytes([got[8], got[9]]),
            16,
            "{what}: csum_offset"
        );
    } else {
        assert_eq!(
            got[0], 0,
            "{what}: NEEDS_CSUM reached the host unnegotiated"
        );
    }

    // TX: a checksum request aimed at the IPv4 source address (offset 26) instead of the TCP
    // checksum field: the host would write 16 guest-chosen bits there after anti-spoofing.
    // The device carries it out itself, before the checks, so anti-spoofing sees the
    // rewritten source and drops the frame.
    let mut aimed = vnet_hdr(NEEDS_CSUM, 0, 0);
    aimed[6..8].copy_from_slice(&26u16.to_le_bytes());
    aimed[8..10].copy_from_slice(&0u16.to_le_bytes());
    aimed.extend_from_slice(&[0, 0]);
    aimed.extend(tcp_frame(macs, GUEST_IP, NOBODY_IP, 1000));
    guest.send(&aimed);
    let got = sock.recv_incoming();
    if has(CSUM) {
        assert!(
            got.is_none(),
            "{what}: a misaimed checksum request reached the host"
        );
        let c = counters.snapshot();
        assert_eq!(c.tx_checksums_done, 1, "{what}: {c:?}");
    } else {
        let got = got.unwrap_or_else(|| panic!("{what}: the plain frame did not go out"));
        assert_eq!(
            got[0], 0,
            "{what}: NEEDS_CSUM reached the host unnegotiated"
        );
    }

    // RX: the host sends a 20 000-byte GSO frame to the guest.
    let rx = RX_QUEUE as u16;
    if has(MRG_RXBUF) {
        for _ in 0..200 {
            guest.driver.add_buffer(rx, None, 1526);
        }
    } else {
        for _ in 0..16 {
            guest.driver.add_buffer(rx, None, 65_562);
        }
    }
    guest.driver.kick(rx);
    guest.pump();
    let mut inject = vnet_hdr(NEEDS_CSUM, GSO_TCPV4, MSS);
    let host_macs = (GUEST_MAC, HOST_MAC);
    inject.extend(tcp_frame(host_macs, HOST_IP, GUEST_IP, PAYLOAD));
    sock.send(&inject, 1);
    guest.pump();
    let frames = guest.received();
    let mut stream = Vec::new();
    if has(GUEST_TSO4) {
        assert_eq!(frames.len(), 1, "{what}: one GSO frame");
        let (hdr, f) = &frames[0];
        assert_eq!(f.len(), HDRS + PAYLOAD, "{what}");
        assert_eq!(
            (hdr[0] & NEEDS_CSUM, hdr[1]),
            (NEEDS_CSUM, GSO_TCPV4),
            "{what}"
        );
        assert_eq!(u16::from_le_bytes([hdr[4], hdr[5]]), MSS, "{what}");
        stream.extend_from_slice(&f[HDRS..]);
    } else {
        assert_eq!(
            frames.len(),
            PAYLOAD.div_ceil(usize::from(MSS)),
            "{what}: segments"
        );
        for (hdr, f) in &frames {
            assert!(f.len() <= 1514, "{what}: a {}-byte segment", f.len());
            assert_eq!(hdr[1], 0, "{what}: no GSO type without GUEST_TSO4");
            if has(GUEST_CSUM) {
                assert_eq!(hdr[0] & NEEDS_CSUM, NEEDS_CSUM, "{what}: partial checksum");
            } else {
                // RFC 9293 section 3.1: pseudo-header plus segment sum to all ones.
                let tcp = &f[34..];
                let total = sum16(tcp, pseudo(HOST_IP, GUEST_IP, tcp.len()));
                assert_eq!(hdr[0], 0, "{what}: flags without GUEST_CSUM");
                assert_eq!(total, 0xffff, "{what}: the host computed the checksum");
            }
            stream.extend_from_slice(&f[HDRS..]);
        }
    }
    assert!(
        stream
            .iter()
            .enumerate()
            .all(|(i, &b)| b == payload_byte(i))
            && stream.len() == PAYLOAD,
        "{what}: the payload arrived whole and in order"
    );

    // The audit counted wire packets: the RX frame's segments, whichever side cut them.
    drop(guest);
    drop(dev);
    let seen = seen.lock().expect("seen");
    let segments = PAYLOAD.div_ceil(usize::from(MSS)) as u64;
    let rx_flow = seen
        .flows
        .iter()
        .filter(|(k, _)| k.direction == Direction::Rx && k.verdict == Verdict::Forwarded)
        .filter(|(k, _)| k.protocol == 6 && k.dst_port == 5001)
        .map(|(_, s)| (s.packets, s.bytes))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(
        rx_flow,
        (segments, (PAYLOAD + HDRS * segments as usize) as u64),
        "{what}: RX wire packets and bytes"
    );
    let tx_tso = seen
        .flows
        .iter()
        .filter(|(k, _)| k.direction == Direction::Tx && k.dst_port == 5001)
        .map(|(k, s)| (k.verdict, s.packets))
        .collect::<Vec<_>>();
    if has(HOST_TSO4) {
        let plain_frames = if has(CSUM) { 1 } else { 2 };
        assert!(
            tx_tso.contains(&(Verdict::Forwarded, segments + plain_frames)),
            "{what}: {tx_tso:?}"
        );
    } else {
        assert!(
            tx_tso.contains(&(Verdict::DroppedMalformed, 1)),
            "{what}: {tx_tso:?}"
        );
    }
    assert_eq!(
        tx_tso.contains(&(Verdict::DroppedSpoof, 1)),
        has(CSUM),
        "{what}: the rewritten source is a spoof: {tx_tso:?}"
    );
}
