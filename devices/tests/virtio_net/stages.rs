//! The optional stages inside the device: anti-spoofing on its own, the audit seeing every
//! verdict the pipeline reaches, and the shaper charged only for what went out.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;

use devices::virtio::net::audit::{FlowKey, FlowStats};
use packet::{Direction, Verdict};

use crate::fixture::*;

const OWN_IP: [u8; 4] = [10, 0, 0, 2];

/// Virtio header + an Ethernet/IPv4/UDP frame from `src`, sent by the device's own MAC.
fn udp_frame(src: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&MAC.0);
    f.extend_from_slice(&[0x08, 0x00]);
    // IPv4: version 4, IHL 5, total length 28, TTL 64, protocol UDP.
    f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[10, 0, 0, 1]);
    // UDP 12345 -> 53, length 8.
    f.extend_from_slice(&[0x30, 0x39, 0, 53, 0, 8, 0, 0]);
    f
}

fn audited(shaper: Option<Arc<Shaper>>) -> (Fixture, Arc<Mutex<AuditSeen>>) {
    let (audit, seen) = recorded();
    let f = fixture_with(Stages {
        shaper,
        anti_spoofing: Some(anti_spoofing()),
        audit: Some(audit),
    });
    (f, seen)
}

fn anti_spoofing() -> AntiSpoofing {
    AntiSpoofing {
        mac: MAC.0,
        ipv4: Some(Ipv4Addr::from(OWN_IP)),
        deny_dst: Vec::new(),
    }
}

#[test]
fn anti_spoofing_alone_drops_and_counts_spoofed_frames() {
    let mut f = fixture_with(Stages {
        anti_spoofing: Some(anti_spoofing()),
        ..Stages::default()
    });
    let good = udp_frame(OWN_IP);
    f.send(&good);
    f.send(&udp_frame([10, 0, 0, 66]));
    assert_eq!(f.recv_peer().as_deref(), Some(good.as_slice()));
    assert!(f.recv_peer().is_none(), "the spoofed frame stayed in");
    assert_eq!((f.snap().tx_packets, f.snap().tx_dropped), (1, 1));
    assert_eq!(
        f.driver.take_used(TXQ).len(),
        2,
        "dropped chains still go back"
    );
}

#[test]
fn without_stages_that_read_headers_the_headers_are_not_checked() {
    let mut f = fixture();
    let mut odd = udp_frame([10, 0, 0, 66]);
    odd[VNET_HDR_LEN + 14] = 0x41; // IHL 1: headers that do not parse
    f.send(&odd);
    assert_eq!(f.recv_peer().as_deref(), Some(odd.as_slice()));
}

#[test]
fn the_audit_sees_every_verdict_in_pipeline_order() {
    let (mut f, seen) = audited(None);
    let mut malformed = udp_frame(OWN_IP);
    malformed[VNET_HDR_LEN + 14] = 0x41;
    f.send(&udp_frame(OWN_IP));
    f.send(&udp_frame([10, 0, 0, 66]));
    f.send(&malformed);
    f.send(&[0u8; 20]); // shorter than the virtio and Ethernet headers
    f.post_rx(1, 2048);
    f.peer.send(&udp_frame([10, 0, 0, 1])).expect("inject");
    f.pump();
    assert_eq!(f.recv_peer().as_deref(), Some(udp_frame(OWN_IP).as_slice()));
    assert!(f.recv_peer().is_none(), "only the good frame left");
    assert_eq!((f.snap().tx_packets, f.snap().tx_dropped), (1, 3));
    assert_eq!(f.snap().rx_packets, 1);
    let seen = seen.lock().expect("seen");
    assert_eq!(
        seen.captures,
        [
            (Direction::Tx, Verdict::Forwarded),
            (Direction::Tx, Verdict::DroppedSpoof),
            (Direction::Tx, Verdict::DroppedMalformed),
            (Direction::Tx, Verdict::DroppedMalformed),
            (Direction::Rx, Verdict::Forwarded),
        ]
    );
}

/// `frame` (virtio header + Ethernet frame) with VLAN tags of `tpids` (outermost first).
fn tagged(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let at = VNET_HDR_LEN + 12;
    let mut f = frame[..at].to_vec();
    for tpid in tpids {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&7u16.to_be_bytes()); // VID 7
    }
    f.extend_from_slice(&frame[at..]);
    f
}

#[test]
fn tagged_frames_do_not_walk_around_anti_spoofing_and_are_audited_with_their_addresses() {
    let (mut f, seen) = audited(None);
    // The stacks from the report (802.1ad + 802.1Q, QinQ with 0x8100 twice and with the
    // pre-standard 0x9100, a single S-tag) and a single C-tag, each spoofed and not.
    let stacks: [&[u16]; 5] = [
        &[0x88a8, 0x8100],
        &[0x8100, 0x8100],
        &[0x9100, 0x8100],
        &[0x88a8],
        &[0x8100],
    ];
    for tpids in stacks {
        f.send(&tagged(&udp_frame([10, 0, 0, 66]), tpids));
        f.send(&tagged(&udp_frame(OWN_IP), tpids));
    }
    f.send(&udp_frame([10, 0, 0, 66]));
    assert!(
        f.recv_peer().is_none(),
        "nothing tagged or spoofed left the VM"
    );
    assert_eq!((f.snap().tx_packets, f.snap().tx_dropped), (0, 11));
    drop(f);
    let flows = seen_flows(&seen);
    for tags in [1u8, 2] {
        for src in [[10, 0, 0, 66], OWN_IP] {
            let flow = flows
                .iter()
                .find(|(k, _)| {
                    k.vlan_tags == tags && k.src == Some(IpAddr::from(Ipv4Addr::from(src)))
                })
                .unwrap_or_else(|| panic!("a flow of {tags}-tagged frames from {src:?}"));
            assert_eq!(flow.0.verdict, Verdict::DroppedPolicy);
            assert_eq!((flow.0.ethertype, flow.0.dst_port), (0x0800, 53));
        }
    }
    let untagged = flows
        .iter()
        .find(|(k, _)| k.vlan_tags == 0)
        .expect("the untagged frame");
    assert_eq!(untagged.0.verdict, Verdict::DroppedSpoof);
}

#[test]
fn only_ipv4_arp_and_ipv6_leave_the_vm() {
    let mut f = fixture_with(Stages {
        anti_spoofing: Some(anti_spoofing()),
        ..Stages::default()
    });
    // LLDP, MPLS, PPPoE discovery, 802.1X, IPX, an unassigned EtherType, an 802.3 length.
    for ethertype in [0x88ccu16, 0x8847, 0x8863, 0x888e, 0x8137, 0x1234, 0x05dc] {
        let mut frame = udp_frame(OWN_IP);
        frame[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&ethertype.to_be_bytes());
        f.send(&frame);
    }
    assert!(f.recv_peer().is_none(), "no other EtherType left the VM");
    assert_eq!((f.snap().tx_packets, f.snap().tx_dropped), (0, 7));
    f.send(&udp_frame(OWN_IP));
    assert!(
        f.recv_peer().is_some(),
        "IPv4 from the sliver's address still goes"
    );
}

fn seen_flows(seen: &Arc<Mutex<AuditSeen>>) -> Vec<(FlowKey, FlowStats)> {
    seen.lock().expect("seen").flows.clone()
}

#[test]
fn flows_name_the_spoofed_source_when_the_device_goes() {
    let (mut f, seen) = audited(None);
    f.send(&udp_frame(OWN_IP));
    f.send(&udp_frame([10, 0, 0, 66]));
    drop(f);
    let flows = seen_flows(&seen);
    assert_eq!(flows.len(), 2, "{flows:?}");
    let spoof = flows
        .iter()
        .find(|(k, _)| k.verdict == Verdict::DroppedSpoof)
        .expect("spoof flow");
    assert_eq!(spoof.0.src, Some(IpAddr::from(Ipv4Addr::new(10, 0, 0, 66))));
    assert_eq!((spoof.0.dst_port, spoof.1.packets), (53, 1));
}

/// A rate the test switches: `None` unlimited, `Some(0)` nothing goes. Counts bytes charged.
#[derive(Default)]
struct Switch {
    unlimited: std::sync::atomic::AtomicBool,
    bytes: std::sync::atomic::AtomicU64,
}

/// The shaper's view of a shared [`Switch`].
struct SwitchedRate(Arc<Switch>);

impl RateSource for SwitchedRate {
    fn rate(&self, _dir: Direction) -> Option<u64> {
        (!self.0.unlimited.load(Ordering::Relaxed)).then_some(0)
    }
    fn account(&self, _dir: Direction, bytes: u64) {
        self.0.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn set_backlogged(&self, _dir: Direction, _backlogged: bool) {}
    fn add_throttled(&self, _dir: Direction, _ns: u64) {}
}

#[test]
fn frames_queued_during_a_wait_are_delayed_and_drops_are_not_charged() {
    // Rate 0: the starting burst (two full frames' worth) lets four 1 000-byte frames out,
    // the last into debt; the fifth chain waits in the ring.
    let rate = Arc::new(Switch::default());
    let shaper = Arc::new(Shaper::new(Box::new(SwitchedRate(rate.clone()))));
    let (mut f, seen) = audited(Some(shaper));
    let mut big = udp_frame(OWN_IP);
    big.resize(VNET_HDR_LEN + 1000, 0);
    for _ in 0..4 {
        f.driver.add_buffer(TXQ, Some(&big), 0);
    }
    let spoofed = udp_frame([10, 0, 0, 66]);
    f.driver.add_buffer(TXQ, Some(&spoofed), 0);
    f.driver.add_buffer(TXQ, Some(&big), 0);
    f.driver.add_buffer(TXQ, Some(&big), 0);
    f.driver.kick(TXQ);
    f.pump();
    assert_eq!(f.snap().tx_packets, 4, "the burst");
    assert_eq!(f.snap().tx_throttled, 1, "then the queue waits");
    // The rate opens; the shaper timer (at most 50 ms at rate 0) lets the rest go at once.
    rate.unlimited.store(true, Ordering::Relaxed);
    let end = std::time::Instant::now() + std::time::Duration::from_millis(500);
    while f.snap().tx_packets < 6 && std::time::Instant::now() < end {
        f.em.run_with_timeout(10).expect("event loop");
    }
    assert_eq!((f.snap().tx_packets, f.snap().tx_dropped), (6, 1));
    assert_eq!(f.snap().tx_throttled, 1, "one wait in all");
    assert_eq!(
        rate.bytes.load(Ordering::Relaxed),
        f.snap().tx_bytes,
        "the shaper is charged what went out, not the dropped frame"
    );
    // A frame queued after the wait went by nothing.
    f.send(&big);
    let verdicts: Vec<Verdict> = seen
        .lock()
        .expect("seen")
        .captures
        .iter()
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(
        verdicts,
        [
            Verdict::Forwarded,
            Verdict::Forwarded,
            Verdict::Forwarded,
            Verdict::Forwarded,
            Verdict::DroppedSpoof,
            Verdict::Delayed,
            Verdict::Delayed,
            Verdict::Forwarded,
        ],
        "the chains in the ring while it waited were delayed (the spoofed one is still a drop)"
    );
}

#[test]
fn an_rx_frame_is_delayed_only_if_it_waited_in_the_tap() {
    let rate = Arc::new(Switch::default());
    let shaper = Arc::new(Shaper::new(Box::new(SwitchedRate(rate.clone()))));
    let (mut f, seen) = audited(Some(shaper));
    let mut big = udp_frame([10, 0, 0, 1]);
    big.resize(VNET_HDR_LEN + 1000, 0);
    // Rate 0: the starting burst lets four 1 000-byte frames in, the last into debt.
    f.post_rx(8, 2048);
    for _ in 0..4 {
        f.peer.send(&big).expect("inject");
    }
    f.pump();
    assert_eq!(f.snap().rx_packets, 4);
    // In debt with nothing in the TAP: RX waits, but no frame is held back.
    f.post_rx(1, 2048);
    assert!(f.snap().rx_throttled >= 1, "RX waited");
    rate.unlimited.store(true, Ordering::Relaxed);
    let end = std::time::Instant::now() + std::time::Duration::from_millis(200);
    while std::time::Instant::now() < end {
        f.em.run_with_timeout(10).expect("event loop");
    }
    f.peer.send(&big).expect("inject");
    f.pump();
    assert_eq!(f.snap().rx_packets, 5);
    let verdicts: Vec<Verdict> = AuditSeen::verdicts(&seen)
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        verdicts,
        [Verdict::Forwarded; 5],
        "a frame that came after the wait was not delayed"
    );
}

#[test]
fn flows_count_ip_bytes_without_ethernet_header_or_padding() {
    let (mut f, seen) = audited(None);
    // An IPv4/UDP packet of 28 bytes in a frame padded to Ethernet's 60-byte minimum.
    let mut padded = udp_frame(OWN_IP);
    padded.resize(VNET_HDR_LEN + 60, 0);
    f.send(&padded);
    f.send(&padded);
    drop(f);
    let flows = seen_flows(&seen);
    assert_eq!(flows.len(), 1, "{flows:?}");
    let stats = flows[0].1;
    assert_eq!((stats.packets, stats.bytes, stats.ip_bytes), (2, 120, 56));
}
