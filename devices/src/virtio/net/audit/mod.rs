//! The audit stage of the packet path (both directions): anti-spoofing on TX, a flow record
//! for every packet (NetFlow-style flow table), and the packet's header for the capture ring.
//! What is kept, and where, is the sink's business (the VMM's audit log); this stage never
//! blocks and allocates nothing per packet.

mod flows;
mod headers;
mod spoof;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use flows::{FlowConfig, FlowKey, FlowSink, FlowStats, FlowTable};
pub use headers::{parse, FrameHeaders, HeaderError, IpHeaders};
pub use spoof::SpoofGuard;

use super::policy::{PacketPolicy, Verdict};
use super::shaper::Direction;

/// What the VMM did with a packet, as the audit records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditVerdict {
    /// Passed on.
    Forwarded,
    /// Passed on after waiting for the shaper.
    Throttled,
    /// Dropped: not from the sliver's own addresses.
    DroppedSpoof,
    /// Dropped: not a well-formed frame.
    DroppedMalformed,
}

/// Where the audit stage's output goes (one per NIC). Must not block.
pub trait AuditSink: FlowSink {
    /// One packet's first bytes for the header capture.
    fn capture(
        &mut self,
        ts_ns: u64,
        direction: Direction,
        verdict: AuditVerdict,
        frame_len: usize,
        head: &[u8],
    );
}

/// How often idle flows are looked for.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The audit stage of one NIC.
pub struct AuditStage {
    guard: Option<SpoofGuard>,
    flows: FlowTable,
    sink: Box<dyn AuditSink>,
    capture: bool,
    /// The next frame in that direction waited for the shaper.
    delayed: [bool; 2],
}

impl std::fmt::Debug for AuditStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditStage")
            .field("guard", &self.guard)
            .field("flows", &self.flows)
            .finish_non_exhaustive()
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl AuditStage {
    /// A stage that checks TX sources against `guard` (none: no check), keeps flows per
    /// `config`, and hands flows (and, with `capture`, packet headers) to `sink`.
    pub fn new(
        guard: Option<SpoofGuard>,
        config: FlowConfig,
        sink: Box<dyn AuditSink>,
        capture: bool,
    ) -> Self {
        Self {
            guard,
            flows: FlowTable::new(config),
            sink,
            capture,
            delayed: [false, false],
        }
    }

    fn account(
        &mut self,
        direction: Direction,
        head: &[u8],
        frame_len: usize,
        parsed: Option<&FrameHeaders>,
        verdict: AuditVerdict,
    ) {
        let now = now_ns();
        let ip = parsed.and_then(|h| h.ip);
        let ethertype = match parsed {
            Some(h) => h.ethertype,
            None => head
                .get(12..14)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
        };
        let key = FlowKey {
            direction,
            ethertype,
            src: ip.map(|i| i.src),
            dst: ip.map(|i| i.dst),
            protocol: ip.map_or(0, |i| i.protocol),
            src_port: ip.map_or(0, |i| i.src_port),
            dst_port: ip.map_or(0, |i| i.dst_port),
            verdict,
        };
        let flags = ip.map_or(0, |i| i.tcp_flags);
        self.flows
            .record(key, now, frame_len as u64, flags, self.sink.as_mut());
        if self.capture {
            self.sink.capture(now, direction, verdict, frame_len, head);
        }
    }

    fn decide(&mut self, direction: Direction, head: &[u8], frame_len: usize) -> Verdict {
        let parsed = parse(head, frame_len);
        let verdict = match &parsed {
            Err(_) => AuditVerdict::DroppedMalformed,
            Ok(h) if direction == Direction::Tx && self.guard.is_some_and(|g| !g.allows(h)) => {
                AuditVerdict::DroppedSpoof
            }
            Ok(_) if std::mem::take(&mut self.delayed[direction as usize]) => {
                AuditVerdict::Throttled
            }
            Ok(_) => AuditVerdict::Forwarded,
        };
        self.account(direction, head, frame_len, parsed.as_ref().ok(), verdict);
        match verdict {
            AuditVerdict::Forwarded | AuditVerdict::Throttled => Verdict::Forward,
            AuditVerdict::DroppedSpoof | AuditVerdict::DroppedMalformed => Verdict::Drop,
        }
    }
}

impl PacketPolicy for AuditStage {
    fn on_tx(&mut self, headers: &[u8], frame_len: usize) -> Verdict {
        self.decide(Direction::Tx, headers, frame_len)
    }

    fn on_rx(&mut self, headers: &[u8], frame_len: usize) -> Verdict {
        self.decide(Direction::Rx, headers, frame_len)
    }

    fn on_tx_malformed(&mut self, headers: &[u8], frame_len: usize) {
        self.account(
            Direction::Tx,
            headers,
            frame_len,
            None,
            AuditVerdict::DroppedMalformed,
        );
    }

    fn on_throttled(&mut self, direction: Direction) {
        self.delayed[direction as usize] = true;
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(SWEEP_INTERVAL)
    }

    fn tick(&mut self) {
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
mod tests;
