//! The audit stage on its own: verdicts, flows and captures reach the sink.

use std::sync::{Arc, Mutex};

use super::headers::tests::ipv4_frame;
use super::*;

type Seen = Arc<Mutex<(Vec<(FlowKey, FlowStats)>, Vec<(AuditVerdict, usize)>)>>;

struct Sink(Seen);
impl FlowSink for Sink {
    fn flow(&mut self, key: &FlowKey, stats: &FlowStats) {
        self.0.lock().expect("sink").0.push((*key, *stats));
    }
}
impl AuditSink for Sink {
    fn capture(&mut self, _ts: u64, _d: Direction, v: AuditVerdict, len: usize, _h: &[u8]) {
        self.0.lock().expect("sink").1.push((v, len));
    }
}

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

fn stage() -> (AuditStage, Seen) {
    let seen = Seen::default();
    let guard = SpoofGuard {
        mac: MAC,
        ipv4: Some([10, 0, 0, 2].into()),
    };
    let s = AuditStage::new(
        Some(guard),
        FlowConfig::default(),
        Box::new(Sink(seen.clone())),
        true,
    );
    (s, seen)
}

#[test]
fn spoofed_frames_are_dropped_and_recorded() {
    let (mut s, seen) = stage();
    let good = ipv4_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1], 6);
    let spoofed = ipv4_frame(MAC, [10, 0, 0, 66], [10, 0, 0, 1], 6);
    assert_eq!(s.on_tx(&good, good.len()), Verdict::Forward);
    assert_eq!(s.on_tx(&good, good.len()), Verdict::Forward);
    assert_eq!(s.on_tx(&spoofed, spoofed.len()), Verdict::Drop);
    // RX is not checked against the sliver's addresses.
    assert_eq!(s.on_rx(&spoofed, spoofed.len()), Verdict::Forward);
    drop(s);
    let seen = seen.lock().expect("seen");
    assert_eq!(seen.1.len(), 4, "every packet captured");
    let flows = &seen.0;
    assert_eq!(flows.len(), 3, "{flows:?}");
    let fwd = flows
        .iter()
        .find(|(k, _)| k.verdict == AuditVerdict::Forwarded && k.direction == Direction::Tx)
        .expect("forwarded flow");
    assert_eq!(fwd.1.packets, 2);
    assert_eq!(fwd.0.dst_port, 80);
    assert!(flows
        .iter()
        .any(|(k, _)| k.verdict == AuditVerdict::DroppedSpoof
            && k.src == Some("10.0.0.66".parse().expect("ip"))));
}

#[test]
fn malformed_and_throttled_verdicts() {
    let (mut s, seen) = stage();
    let mut bad = ipv4_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1], 17);
    bad[14] = 0x41; // IHL 1
    assert_eq!(s.on_tx(&bad, bad.len()), Verdict::Drop);
    s.on_tx_malformed(&[0u8; 8], 8);
    s.on_throttled(Direction::Tx);
    let good = ipv4_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1], 17);
    assert_eq!(s.on_tx(&good, good.len()), Verdict::Forward);
    assert_eq!(s.on_tx(&good, good.len()), Verdict::Forward);
    drop(s);
    let seen = seen.lock().expect("seen");
    let verdicts: Vec<AuditVerdict> = seen.1.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        verdicts,
        vec![
            AuditVerdict::DroppedMalformed,
            AuditVerdict::DroppedMalformed,
            AuditVerdict::Throttled,
            AuditVerdict::Forwarded
        ],
        "only the frame right after the wait counts as throttled"
    );
    let malformed: u64 = seen
        .0
        .iter()
        .filter(|(k, _)| k.verdict == AuditVerdict::DroppedMalformed)
        .map(|(_, s)| s.packets)
        .sum();
    assert_eq!(malformed, 2);
}
