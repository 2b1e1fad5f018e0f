//! An audit sink that keeps what the audit stage handed it, for tests to look at.

use std::sync::{Arc, Mutex};

use packet::{Direction, Verdict};

use crate::virtio::net::audit::{FlowConfig, FlowKey, FlowSink, FlowStats};
use crate::virtio::net::{AuditSink, AuditStage};

/// What the audit stage handed its sink: flows, and the captures in the order they came.
#[derive(Debug, Default)]
pub struct AuditSeen {
    /// Ended flows.
    pub flows: Vec<(FlowKey, FlowStats)>,
    /// Each packet's direction and verdict.
    pub captures: Vec<(Direction, Verdict)>,
}

struct Recorder(Arc<Mutex<AuditSeen>>);

impl FlowSink for Recorder {
    fn flow(&mut self, key: &FlowKey, stats: &FlowStats) {
        self.0.lock().expect("seen").flows.push((*key, *stats));
    }
}

impl AuditSink for Recorder {
    fn capture(&mut self, _ts: u64, d: Direction, v: Verdict, _len: usize, _head: &[u8]) {
        self.0.lock().expect("seen").captures.push((d, v));
    }
}

/// An audit stage (default flow settings, capture on) and what it will have seen.
pub fn recorded() -> (AuditStage, Arc<Mutex<AuditSeen>>) {
    let seen = Arc::new(Mutex::new(AuditSeen::default()));
    let audit = AuditStage::new(
        FlowConfig::default(),
        Box::new(Recorder(seen.clone())),
        true,
    );
    (audit, seen)
}

impl AuditSeen {
    /// The captures' verdicts so far, in order.
    pub fn verdicts(seen: &Mutex<AuditSeen>) -> Vec<(Direction, Verdict)> {
        seen.lock().expect("seen").captures.clone()
    }
}
