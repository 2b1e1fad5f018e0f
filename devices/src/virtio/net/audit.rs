//! The audit stage of the packet path (both directions): every packet, whatever its verdict,
//! is counted in a flow record (NetFlow-style flow table) and, with capture on, its first
//! bytes go to the header capture. What is kept, and where, is the sink's business (the VMM's
//! audit log); this stage never blocks and allocates nothing per packet.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use packet::{Direction, Verdict};

pub use super::flow_table::{FlowConfig, FlowKey, FlowSink, FlowStats, FlowTable};
use super::gso::WireSize;
use super::headers::FrameHeaders;

/// Where the audit stage's output goes (one per NIC). Must not block.
pub trait AuditSink: FlowSink {
    /// One packet's first bytes for the header capture: `ts_ns` since the Unix epoch, the
    /// whole frame's length `frame_len` in bytes, `head` its first bytes (at most
    /// [`super::headers::HEADER_BYTES`]).
    fn capture(
        &mut self,
        ts_ns: u64,
        direction: Direction,
        verdict: Verdict,
        frame_len: usize,
        head: &[u8],
    );

    /// A batch of packets begins: until [`AuditSink::end_batch`], captures may keep what
    /// they share with other sinks (a lock, a buffer) instead of taking it for each packet.
    fn begin_batch(&mut self) {}

    /// The batch is over: whatever was kept for it is let go.
    fn end_batch(&mut self) {}
}

/// How often idle flows are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The audit stage of one NIC.
pub struct AuditStage {
    flows: FlowTable,
    sink: Box<dyn AuditSink>,
    capture: bool,
    /// The time of the batch of frames being processed ([`AuditStage::begin_batch`]): one
    /// clock read per batch instead of one per packet.
    batch_ns: Option<u64>,
}

impl std::fmt::Debug for AuditStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStage")
            .field("flows", &self.flows)
            .field("capture", &self.capture)
            .finish_non_exhaustive()
    }
}

/// Wall-clock time in nanoseconds since the Unix epoch (0 before 1970).
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl AuditStage {
    /// A stage that keeps flows per `config` and hands them (and, with `capture`, packet
    /// headers) to `sink`.
    pub fn new(config: FlowConfig, sink: Box<dyn AuditSink>, capture: bool) -> Self {
        Self {
            flows: FlowTable::new(config),
            sink,
            capture,
            batch_ns: None,
        }
    }

    /// A queue starts a batch of frames (at most a queue's worth, processed in well under a
    /// millisecond): they are all recorded at this time, until [`AuditStage::end_batch`].
    pub fn begin_batch(&mut self) {
        self.batch_ns = Some(now_ns());
        self.sink.begin_batch();
    }

    /// The batch is over: packets are timed one by one again.
    pub fn end_batch(&mut self) {
        self.batch_ns = None;
        self.sink.end_batch();
    }

    /// The stage: count one frame going `direction` with `verdict`. `head` is the frame's
    /// first bytes, `size` what it is on the wire (one packet, or a GSO frame's segments:
    /// the flow counts each of them with its headers; the capture holds the frame once, with
    /// its whole length), `parsed` its headers when the frame checks could read them (a
    /// frame without is recorded by its EtherType alone, if any).
    pub fn record(
        &mut self,
        direction: Direction,
        head: &[u8],
        size: WireSize,
        parsed: Option<&FrameHeaders>,
        verdict: Verdict,
    ) {
        let now = self.batch_ns.unwrap_or_else(now_ns);
        let ip = parsed.and_then(|h| h.ip);
        let ethertype = match parsed {
            Some(h) => h.ethertype,
            None => head
                .get(12..14)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
        };
        let key = FlowKey {
            direction,
            vlan_tags: parsed.map_or(0, |h| h.vlan_tags),
            ethertype,
            src: ip.map(|i| i.src),
            dst: ip.map(|i| i.dst),
            protocol: ip.map_or(0, |i| i.protocol),
            src_port: ip.map_or(0, |i| i.src_port),
            dst_port: ip.map_or(0, |i| i.dst_port),
            verdict,
        };
        let flags = ip.map_or(0, |i| i.tcp_flags);
        self.flows.record(
            &key,
            now,
            (size.packets, size.bytes, size.ip_bytes),
            flags,
            self.sink.as_mut(),
        );
        if self.capture {
            self.sink
                .capture(now, direction, verdict, size.frame_len, head);
        }
    }

    /// Housekeeping, every [`SWEEP_INTERVAL`] on the device's event loop: flows idle for
    /// their timeout end and go to the sink.
    pub fn sweep(&mut self) {
        self.flows.expire(now_ns(), self.sink.as_mut());
    }
}

impl Drop for AuditStage {
    /// The VMM is going: every open flow is reported.
    fn drop(&mut self) {
        self.flows.drain(self.sink.as_mut());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::virtio::net::headers::parse;
    use crate::virtio::net::headers::tests::ipv4_frame;

    type Seen = Arc<Mutex<(Vec<(FlowKey, FlowStats)>, Vec<(Verdict, usize)>)>>;

    struct Sink(Seen);
    impl FlowSink for Sink {
        fn flow(&mut self, key: &FlowKey, stats: &FlowStats) {
            self.0.lock().expect("sink").0.push((*key, *stats));
        }
    }
    impl AuditSink for Sink {
        fn capture(&mut self, _ts: u64, _d: Direction, v: Verdict, len: usize, _h: &[u8]) {
            self.0.lock().expect("sink").1.push((v, len));
        }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn stage(capture: bool) -> (AuditStage, Seen) {
        let seen = Seen::default();
        let s = AuditStage::new(FlowConfig::default(), Box::new(Sink(seen.clone())), capture);
        (s, seen)
    }

    fn record(s: &mut AuditStage, dir: Direction, frame: &[u8], verdict: Verdict) {
        let parsed = parse(frame, frame.len()).ok();
        let size = WireSize::single(frame.len(), parsed.as_ref());
        s.record(dir, frame, size, parsed.as_ref(), verdict);
    }

    #[test]
    fn every_verdict_is_a_flow_and_every_packet_a_capture() {
        let (mut s, seen) = stage(true);
        let good = ipv4_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1], 6);
        let spoofed = ipv4_frame(MAC, [10, 0, 0, 66], [10, 0, 0, 1], 6);
        record(&mut s, Direction::Tx, &good, Verdict::Forwarded);
        record(&mut s, Direction::Tx, &good, Verdict::Forwarded);
        record(&mut s, Direction::Tx, &spoofed, Verdict::DroppedSpoof);
        record(&mut s, Direction::Rx, &spoofed, Verdict::Forwarded);
        drop(s);
        let seen = seen.lock().expect("seen");
        assert_eq!(seen.1.len(), 4, "every packet captured");
        let flows = &seen.0;
        assert_eq!(flows.len(), 3, "{flows:?}");
        let fwd = flows
            .iter()
            .find(|(k, _)| k.verdict == Verdict::Forwarded && k.direction == Direction::Tx)
            .expect("forwarded flow");
        assert_eq!(fwd.1.packets, 2);
        assert_eq!(fwd.0.dst_port, 80);
        assert!(flows.iter().any(|(k, _)| k.verdict == Verdict::DroppedSpoof
            && k.src == Some("10.0.0.66".parse().expect("ip"))));
    }

    #[test]
    fn an_unparsed_frame_is_recorded_by_its_ethertype() {
        let (mut s, seen) = stage(false);
        let mut bad = ipv4_frame(MAC, [10, 0, 0, 2], [10, 0, 0, 1], 17);
        bad[14] = 0x41; // IHL 1: the headers do not parse
        record(&mut s, Direction::Tx, &bad, Verdict::DroppedMalformed);
        s.record(
            Direction::Tx,
            &[0u8; 8],
            WireSize::single(8, None),
            None,
            Verdict::DroppedMalformed,
        );
        drop(s);
        let seen = seen.lock().expect("seen");
        assert!(seen.1.is_empty(), "capture off");
        let mut keys: Vec<(u16, Option<std::net::IpAddr>)> =
            seen.0.iter().map(|(k, _)| (k.ethertype, k.src)).collect();
        keys.sort();
        assert_eq!(keys, [(0, None), (0x0800, None)], "{keys:?}");
    }
}
