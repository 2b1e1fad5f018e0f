//! The VMM's end of the packet path's audit stage: ended flows become [`FlowRecord`]s in the
//! sliver's log (never blocking: a full queue drops and counts), packet headers go to the
//! sliver's capture ring, which a NIC holds for a batch of packets at a time.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use audit_store::capture::{CaptureConfig, CaptureRing, RING_FILE};
use audit_store::record::FlowRecord;
use audit_store::writer::{AuditConfig, AuditLog};
use audit_store::Result;
use devices::virtio::net::audit::{AuditSink, FlowKey, FlowSink, FlowStats};
use packet::{Direction, Verdict};

/// Who the records are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Slice name.
    pub slice: String,
    /// Sliver name.
    pub sliver: String,
}

/// A slice's numeric id (IPFIX ingressVRFID/egressVRFID): FNV-1a of its name, so every node
/// and every export gives a slice the same id; exports carry the names beside the ids.
pub fn slice_id(slice: &str) -> u32 {
    slice.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// One sliver's audit outputs, shared by its NICs.
pub struct SliverAudit {
    /// Declared (so dropped) before `ring`: its writer thread, which faults the ring's pages
    /// in ahead of the packets, has stopped before the ring is unmapped.
    log: AuditLog,
    ring: Option<SharedRing>,
    identity: Identity,
    slice_id: u32,
}

impl std::fmt::Debug for SliverAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SliverAudit")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl SliverAudit {
    /// Open (recovering) the log in `dir` and, if enabled, the capture ring beside it.
    pub fn open(dir: &Path, identity: Identity, capture: &CaptureConfig) -> Result<Arc<Self>> {
        let (log, report) = AuditLog::open_with(
            dir,
            AuditConfig::default(),
            crate::seccomp::enter_audit_writer,
        )?;
        log::info!("audit log {}: {report:?}", dir.display());
        let ring = if capture.enabled {
            Some(SharedRing::new(CaptureRing::open(
                &dir.join(RING_FILE),
                capture,
            )?))
        } else {
            None
        };
        Ok(Arc::new(Self {
            log,
            ring,
            slice_id: slice_id(&identity.slice),
            identity,
        }))
    }

    /// The log (for counters).
    pub fn log(&self) -> &AuditLog {
        &self.log
    }
}

/// A sliver's capture ring, shared by its NICs: a NIC takes it out for a batch of packets
/// and puts it back when the batch ends, so that the lock is taken twice a batch instead of
/// once a packet (per packet, an uncontended lock and unlock cost the RX path 2-4 %:
/// `net_path 2000 audit`, docs/benchmarks.md).
struct SharedRing {
    state: Mutex<RingState>,
    /// Signalled when the ring is put back and a NIC waits for it.
    returned: Condvar,
}

/// The ring when no NIC holds it, and how many wait for it.
struct RingState {
    ring: Option<CaptureRing>,
    waiting: u32,
}

impl SharedRing {
    fn new(ring: CaptureRing) -> Self {
        Self {
            state: Mutex::new(RingState {
                ring: Some(ring),
                waiting: 0,
            }),
            returned: Condvar::new(),
        }
    }

    /// The ring, once no other NIC holds it. A sliver's NICs all run on its event loop,
    /// whose batches do not nest: the ring is there whenever a NIC's batch comes to take it.
    fn take(&self) -> CaptureRing {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(ring) = state.ring.take() {
                return ring;
            }
            state.waiting += 1;
            state = self
                .returned
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.waiting -= 1;
        }
    }

    /// Put back the ring [`SharedRing::take`] gave (waking a waiting NIC, if any: no system
    /// call otherwise).
    fn put(&self, ring: CaptureRing) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.ring = Some(ring);
        let wake = state.waiting > 0;
        drop(state);
        if wake {
            self.returned.notify_one();
        }
    }
}

/// The audit sink of NIC `nic`.
pub struct NicSink {
    /// The capture ring while this NIC holds it (during a batch of packets).
    held: Option<CaptureRing>,
    /// Holding the ring for the rest of the batch ([`AuditSink::begin_batch`]).
    in_batch: bool,
    audit: Arc<SliverAudit>,
    nic: u8,
}

impl std::fmt::Debug for NicSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NicSink")
            .field("nic", &self.nic)
            .field("holds_ring", &self.held.is_some())
            .finish_non_exhaustive()
    }
}

impl NicSink {
    /// NIC `nic` of the sliver.
    pub fn new(audit: Arc<SliverAudit>, nic: u8) -> Self {
        Self {
            held: None,
            in_batch: false,
            audit,
            nic,
        }
    }

    /// Put the ring back, if held.
    fn let_go(&mut self) {
        if let (Some(ring), Some(shared)) = (self.held.take(), &self.audit.ring) {
            shared.put(ring);
        }
    }
}

impl Drop for NicSink {
    fn drop(&mut self) {
        self.let_go();
    }
}

impl FlowSink for NicSink {
    fn flow(&mut self, key: &FlowKey, stats: &FlowStats) {
        let a = &self.audit;
        let rec = FlowRecord {
            seq: 0,
            slice: a.identity.slice.clone(),
            slice_id: a.slice_id,
            sliver: a.identity.sliver.clone(),
            nic: self.nic,
            direction: key.direction,
            vlan_tags: key.vlan_tags,
            ethertype: key.ethertype,
            src: key.src,
            dst: key.dst,
            protocol: key.protocol,
            src_port: key.src_port,
            dst_port: key.dst_port,
            first_ns: stats.first_ns,
            last_ns: stats.last_ns,
            packets: stats.packets,
            bytes: stats.bytes,
            ip_bytes: stats.ip_bytes,
            tcp_flags: stats.tcp_flags,
            verdict: key.verdict,
        };
        // A full queue (slow or failing disk) is counted by the log; the packet path goes on.
        if let Err(e) = a.log.append(&rec) {
            log::debug!("audit: {e}");
        }
    }
}

impl AuditSink for NicSink {
    fn capture(
        &mut self,
        ts_ns: u64,
        direction: Direction,
        verdict: Verdict,
        frame_len: usize,
        head: &[u8],
    ) {
        let Some(shared) = &self.audit.ring else {
            return;
        };
        let ring = self.held.get_or_insert_with(|| shared.take());
        let ahead = ring.push(
            ts_ns,
            self.nic,
            direction,
            verdict,
            u32::try_from(frame_len).unwrap_or(u32::MAX),
            head,
        );
        if !self.in_batch {
            self.let_go();
        }
        // The ring's next pages fault in on the writer thread, not here.
        if let Some(range) = ahead {
            self.audit.log.populate(range);
        }
    }

    fn begin_batch(&mut self) {
        self.in_batch = true;
    }

    fn end_batch(&mut self) {
        self.in_batch = false;
        self.let_go();
    }
}

#[cfg(test)]
mod tests {
    use devices::virtio::net::audit::{AuditStage, FlowConfig};
    use devices::virtio::net::gso::WireSize;
    use devices::virtio::net::headers::parse;

    use super::*;

    /// Slice `pl_test`'s sliver `alpha`, audited in `dir` with a capture ring of `bytes`.
    fn open_audit(dir: &Path, bytes: u64) -> Arc<SliverAudit> {
        let identity = Identity {
            slice: "pl_test".into(),
            sliver: "alpha".into(),
        };
        let capture = CaptureConfig {
            bytes,
            ..CaptureConfig::default()
        };
        SliverAudit::open(dir, identity, &capture).expect("open")
    }

    #[test]
    fn slice_ids_are_stable_and_distinct() {
        assert_eq!(slice_id("princeton_codeen"), slice_id("princeton_codeen"));
        assert_ne!(slice_id("princeton_codeen"), slice_id("mit_ron"));
    }

    #[test]
    fn the_stage_writes_flows_and_captures_through_the_sink() {
        let dir = tempfile::tempdir().expect("tmp");
        let audit = open_audit(dir.path(), 1 << 20);
        let mac = [2, 0, 0, 0, 0, 9];
        let mut stage = AuditStage::new(
            FlowConfig::default(),
            Box::new(NicSink::new(audit.clone(), 0)),
            true,
        );
        let frame = |src: [u8; 4]| {
            let mut f = vec![0x02, 0, 0, 0, 0, 1];
            f.extend_from_slice(&mac);
            f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
            f.extend_from_slice(&src);
            f.extend_from_slice(&[10, 0, 0, 1, 0x30, 0x39, 0, 53, 0, 8, 0, 0]);
            f
        };
        let good = frame([10, 0, 0, 2]);
        let spoofed = frame([10, 0, 0, 99]);
        for (frame, verdict) in [
            (&good, Verdict::Forwarded),
            (&spoofed, Verdict::DroppedSpoof),
        ] {
            let parsed = parse(frame, frame.len()).expect("parse");
            let size = WireSize::single(frame.len(), Some(&parsed));
            stage.record(Direction::Tx, frame, size, Some(&parsed), verdict);
        }
        drop(stage); // ends every flow
        audit.log().flush(std::time::Duration::from_secs(5));
        let ring = audit_store::capture::read_ring(&dir.path().join(RING_FILE)).expect("ring");
        assert_eq!(ring.packets.len(), 2, "both packets captured");
        let mut recs = Vec::new();
        audit_store::reader::for_each_in_dir(dir.path(), |r| {
            recs.push(r);
            true
        })
        .expect("records");
        assert_eq!(recs.len(), 2, "{recs:?}");
        let spoof = recs
            .iter()
            .find(|r| r.verdict == Verdict::DroppedSpoof)
            .expect("spoof record");
        assert_eq!(spoof.src, Some("10.0.0.99".parse().expect("ip")));
        assert_eq!(
            (spoof.slice.as_str(), spoof.sliver.as_str()),
            ("pl_test", "alpha")
        );
        assert_eq!(spoof.dst_port, 53);
        assert_eq!(spoof.slice_id, slice_id("pl_test"));
    }

    /// A NIC holds the ring for its batch and puts it back at the batch's end, or when it is
    /// dropped mid-batch: the sliver's other NIC captures after it, and every packet is in
    /// the ring, in order.
    #[test]
    fn nics_take_turns_with_the_ring_batch_by_batch() {
        let dir = tempfile::tempdir().expect("tmp");
        let audit = open_audit(dir.path(), 1 << 20);
        let (mut nic0, mut nic1) = (
            NicSink::new(audit.clone(), 0),
            NicSink::new(audit.clone(), 1),
        );
        let mut ts = 0u64;
        let mut capture = |sink: &mut NicSink| {
            ts += 1;
            sink.capture(ts, Direction::Rx, Verdict::Forwarded, 60, &[0u8; 60]);
        };
        nic0.begin_batch();
        capture(&mut nic0);
        capture(&mut nic0);
        assert!(nic0.held.is_some(), "held for the batch");
        nic0.end_batch();
        assert!(nic0.held.is_none(), "put back at the batch's end");
        capture(&mut nic1); // outside a batch: taken and put back
        assert!(nic1.held.is_none());
        nic1.begin_batch();
        capture(&mut nic1);
        drop(nic1); // mid-batch
        capture(&mut nic0);
        let ring = audit_store::capture::read_ring(&dir.path().join(RING_FILE)).expect("ring");
        let seen: Vec<(u8, u64)> = ring.packets.iter().map(|p| (p.nic, p.ts_ns)).collect();
        assert_eq!(seen, vec![(0, 1), (0, 2), (1, 3), (1, 4), (0, 5)]);
    }

    /// A NIC on another thread (not how a VMM runs them, but possible) waits while one
    /// holds the ring for its batch, and captures once the batch ends.
    #[test]
    fn a_nic_on_another_thread_waits_for_the_batch_to_end() {
        let dir = tempfile::tempdir().expect("tmp");
        let audit = open_audit(dir.path(), 1 << 20);
        let mut nic0 = NicSink::new(audit.clone(), 0);
        nic0.begin_batch();
        nic0.capture(1, Direction::Tx, Verdict::Forwarded, 60, &[0u8; 60]);
        let mut nic1 = NicSink::new(audit.clone(), 1);
        let other = std::thread::spawn(move || {
            nic1.capture(2, Direction::Tx, Verdict::Forwarded, 60, &[0u8; 60]);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!other.is_finished(), "waits while NIC 0 holds the ring");
        nic0.end_batch();
        other.join().expect("NIC 1's thread");
        let ring = audit_store::capture::read_ring(&dir.path().join(RING_FILE)).expect("ring");
        let seen: Vec<u8> = ring.packets.iter().map(|p| p.nic).collect();
        assert_eq!(seen, vec![0, 1]);
    }

    /// Resident KiB of this process's mapping of `path` (`/proc/self/smaps`).
    fn resident_kib(path: &Path) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let name = path.display().to_string();
        let mut lines = smaps.lines().skip_while(|l| !l.ends_with(&name));
        lines.next().expect("the ring is mapped");
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("Rss line")
    }

    #[test]
    fn the_rings_next_pages_are_faulted_in_on_the_writer_thread() {
        let dir = tempfile::tempdir().expect("tmp");
        let bytes = 16 << 20;
        let audit = open_audit(dir.path(), bytes);
        let ring = dir.path().join(RING_FILE);
        assert!(resident_kib(&ring) < 64, "nothing faulted in at open");
        let mut sink = NicSink::new(audit.clone(), 0);
        sink.capture(1, Direction::Tx, Verdict::Forwarded, 60, &[0u8; 60]);
        // The writer thread takes messages in order: after the flush, the request ran.
        audit.log().flush(std::time::Duration::from_secs(5));
        let kib = resident_kib(&ring);
        let lead = (audit_store::capture::LEAD >> 10) as u64;
        assert!(
            (lead..(bytes >> 10) / 2).contains(&kib),
            "one packet in: {kib} KiB resident, {lead} KiB ahead expected"
        );
    }
}
