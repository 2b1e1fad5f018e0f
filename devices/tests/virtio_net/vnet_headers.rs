//! What reaches the host and the guest from a virtio-net header, and what the audit records
//! when the host refuses a frame: the inputs of the offload report (virtio 1.2 section
//! 5.1.6; a device offering only VERSION_1 and MAC).

use packet::{Direction, Verdict};

use crate::fixture::*;

/// `virtio_net_hdr_v1` fields as the report set them (virtio 1.2 section 5.1.6: flags
/// NEEDS_CSUM = 1, gso_type GSO_TCPV4 = 1; 16-bit fields little-endian).
fn header(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> [u8; 12] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len: Ethernet + IPv4 + TCP
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&csum_start.to_le_bytes());
    h[8..10].copy_from_slice(&csum_offset.to_le_bytes());
    h
}

/// The report's headers: none; NEEDS_CSUM + TCPV4 GSO (gso_size 1000, csum at 34 + 16);
/// TCPV4 with gso_size 0; NEEDS_CSUM with csum_start 60 000.
fn report_headers() -> [[u8; 12]; 4] {
    [
        [0; VNET_HDR_LEN],
        header(1, 1, 1000, 34, 16),
        header(0, 1, 0, 0, 0),
        header(1, 0, 0, 60_000, 0),
    ]
}

/// `hdr` + an Ethernet/IPv4/TCP frame of `len` bytes from the device's MAC.
fn tcp_frame(hdr: [u8; 12], len: usize) -> Vec<u8> {
    let mut f = hdr.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&MAC.0);
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = u16::try_from(len - 14).expect("IPv4 total length");
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1]);
    // TCP 40000 -> 80, data offset 5, ACK.
    f.extend_from_slice(&[
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.resize(VNET_HDR_LEN + len, 0xab);
    f
}

#[test]
fn offload_fields_never_reach_the_host() {
    let mut f = fixture();
    for (i, hdr) in report_headers().into_iter().enumerate() {
        let sent = tcp_frame(hdr, 1514);
        f.send(&sent);
        let got = f
            .recv_peer()
            .unwrap_or_else(|| panic!("frame {i} went out"));
        assert_eq!(
            &got[..VNET_HDR_LEN],
            &[0; VNET_HDR_LEN],
            "header {i} cleared"
        );
        assert_eq!(
            &got[VNET_HDR_LEN..],
            &sent[VNET_HDR_LEN..],
            "frame {i} unchanged"
        );
    }
    assert_eq!(f.snap().tx_header_fields_cleared, 3);
    assert_eq!(f.snap().tx_packets, 4);
}

#[test]
fn frames_longer_than_the_link_are_refused_and_audited_as_malformed() {
    let (audit, seen) = recorded();
    let mut f = fixture_on(
        Some(1500),
        Stages {
            audit: Some(audit),
            ..Stages::default()
        },
    );
    // The report's 3 054-byte frame with each header; then the longest that fits, 1 514
    // bytes (MTU 1 500 + the 14-byte Ethernet header), and one byte more.
    for hdr in report_headers() {
        f.send(&tcp_frame(hdr, 3054));
    }
    f.send(&tcp_frame([0; VNET_HDR_LEN], 1514));
    f.send(&tcp_frame([0; VNET_HDR_LEN], 1515));
    let got = f.recv_peer().expect("the 1 514-byte frame");
    assert_eq!(got.len(), VNET_HDR_LEN + 1514);
    assert!(f.recv_peer().is_none(), "nothing longer went out");
    assert_eq!((f.snap().tx_packets, f.snap().tx_dropped), (1, 5));
    let mut want = vec![(Direction::Tx, Verdict::DroppedMalformed); 4];
    want.push((Direction::Tx, Verdict::Forwarded));
    want.push((Direction::Tx, Verdict::DroppedMalformed));
    assert_eq!(AuditSeen::verdicts(&seen), want);
}

#[test]
fn the_guest_is_told_the_mtu_and_gets_no_longer_frame() {
    // virtio 1.2 section 5.1.3: VIRTIO_NET_F_MTU is bit 3; section 5.1.4: the config's mtu
    // is the 16-bit field at offset 10.
    let mtu_bit = 1u64 << 3;
    let (audit, seen) = recorded();
    let stages = Stages {
        audit: Some(audit),
        ..Stages::default()
    };
    let mut f = fixture_negotiating(FEATURES | mtu_bit, Some(1500), stages);
    let queue_bits = (1 << 29) | (1 << 15); // EVENT_IDX, MRG_RXBUF
    assert_eq!(f.driver.device_features(), FEATURES | mtu_bit | queue_bits);
    let config_8 = f.driver.read_reg(0x100 + 8);
    assert_eq!(config_8 >> 16, 1500, "mtu");
    assert!(
        fixture().driver.device_features() & mtu_bit == 0,
        "no MTU, no feature"
    );
    // From the host: the longest frame the MTU allows arrives, one byte more does not
    // (5.1.6.3.1: the device must not pass longer frames when the MTU was negotiated).
    f.post_rx(2, 4096);
    f.peer
        .send(&tcp_frame([0; VNET_HDR_LEN], 1514))
        .expect("inject");
    f.peer
        .send(&tcp_frame([0; VNET_HDR_LEN], 1515))
        .expect("inject");
    f.pump();
    assert_eq!((f.snap().rx_packets, f.snap().rx_dropped), (1, 1));
    assert_eq!(
        AuditSeen::verdicts(&seen),
        [
            (Direction::Rx, Verdict::Forwarded),
            (Direction::Rx, Verdict::DroppedMalformed)
        ]
    );
}

#[test]
fn a_write_the_host_refuses_is_audited_as_dropped_backend() {
    let (audit, seen) = recorded();
    let mut f = fixture_with(Stages {
        audit: Some(audit),
        ..Stages::default()
    });
    f.send(&tcp_frame([0; VNET_HDR_LEN], 100));
    assert!(f.recv_peer().is_some());
    // The host end goes away: writes now fail with ECONNREFUSED, not "would block".
    f.peer = UnixDatagram::unbound().expect("socket");
    f.send(&tcp_frame([0; VNET_HDR_LEN], 100));
    assert_eq!(
        AuditSeen::verdicts(&seen),
        [
            (Direction::Tx, Verdict::Forwarded),
            (Direction::Tx, Verdict::DroppedBackend)
        ]
    );
    let s = f.snap();
    assert_eq!((s.tx_packets, s.tx_dropped, s.tx_backend_errors), (1, 1, 1));
    assert_eq!(f.driver.take_used(TXQ).len(), 2, "both chains went back");
}

#[test]
fn a_frame_that_would_block_is_audited_once_when_it_goes() {
    let (audit, seen) = recorded();
    let mut f = fixture_with(Stages {
        audit: Some(audit),
        ..Stages::default()
    });
    // Queue more than the peer's receive buffer holds; the rest waits in the ring.
    for _ in 0..200 {
        f.driver
            .add_buffer(TXQ, Some(&tcp_frame([0; VNET_HDR_LEN], 1500)), 0);
    }
    f.driver.kick(TXQ);
    f.pump();
    assert!(f.snap().tx_backend_full > 0, "the backend filled up");
    let mut received = 0;
    loop {
        let written = f.snap().tx_packets;
        assert_eq!(
            AuditSeen::verdicts(&seen).len() as u64,
            written,
            "one verdict per frame written, none for the waiting ones"
        );
        while f.recv_peer().is_some() {
            received += 1;
        }
        if written == 200 {
            break;
        }
        f.em.run_with_timeout(100).expect("event loop");
        f.pump();
    }
    assert_eq!(received, 200);
    assert!(AuditSeen::verdicts(&seen)
        .iter()
        .all(|v| *v == (Direction::Tx, Verdict::Forwarded)));
}

#[test]
fn offload_fields_from_the_host_never_reach_the_guest() {
    let mut f = fixture();
    f.post_rx(1, 2048);
    // DATA_VALID (2) from the host; the guest did not negotiate GUEST_CSUM, so the device
    // must set flags to zero (5.1.6.3.1).
    let sent = tcp_frame(header(2, 0, 0, 34, 16), 1514);
    f.peer.send(&sent).expect("inject");
    f.pump();
    let used = f.driver.take_used(RXQ);
    assert_eq!(used.len(), 1);
    let got = f
        .driver
        .read_mem(GuestDriver::slot_addr(RXQ, used[0].0 as u16), sent.len());
    let mut want_hdr = [0u8; VNET_HDR_LEN];
    want_hdr[10] = 1; // num_buffers
    assert_eq!(&got[..VNET_HDR_LEN], &want_hdr);
    assert_eq!(&got[VNET_HDR_LEN..], &sent[VNET_HDR_LEN..]);
    assert_eq!(f.snap().rx_header_fields_cleared, 1);
    // A TCPV4 GSO frame or a partial checksum (left in the TAP from before the driver's
    // offloads were set): the guest would get one packet longer than the link, or a wrong
    // checksum, so neither is delivered.
    f.post_rx(2, 2048);
    f.peer
        .send(&tcp_frame(header(0, 1, 1000, 34, 16), 1514))
        .expect("inject");
    f.peer
        .send(&tcp_frame(header(1, 0, 0, 34, 16), 1514))
        .expect("inject");
    f.pump();
    assert_eq!(f.driver.take_used(RXQ), [(1, 0), (2, 0)]);
    assert_eq!((f.snap().rx_packets, f.snap().rx_dropped), (1, 2));
}
