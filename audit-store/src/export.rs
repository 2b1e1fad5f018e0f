//! `slicevisor audit export`: the flow logs of every sliver as an IPFIX file, the capture
//! rings as a pcapng file, both limited to `[since, until]`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use serde::Serialize;

use super::capture::{read_ring, RING_FILE};
use super::error::{AuditError, Result};
use super::ipfix::{IpfixStats, IpfixWriter};
use super::pcapng::{Packet, PcapngWriter};
use super::reader;
use super::segment::{self, now_ns};

/// The time range to export (ns since the Unix epoch, inclusive; open ends by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportRange {
    /// Flows that ended and packets captured before this are left out.
    pub since_ns: u64,
    /// Flows that started and packets captured after this are left out.
    pub until_ns: u64,
}

impl Default for ExportRange {
    fn default() -> Self {
        ExportRange {
            since_ns: 0,
            until_ns: u64::MAX,
        }
    }
}

/// What a pcapng export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PcapngStats {
    /// Interface blocks (sliver NICs).
    pub interfaces: u64,
    /// Packets.
    pub packets: u64,
    /// Ring slots skipped as torn.
    pub torn: u64,
}

/// Write the flows of every sliver under `state_dir` in `range` to the IPFIX file `out`.
pub fn ipfix(state_dir: &Path, range: ExportRange, out: &Path) -> Result<IpfixStats> {
    let file = File::create(out).map_err(|e| AuditError::io(out, e))?;
    let export_time = u32::try_from(now_ns() / 1_000_000_000).unwrap_or(u32::MAX);
    // First pass: the slice names, so that they all go in the first message.
    let mut slices = BTreeMap::new();
    reader::for_each_in_state(state_dir, |rec| {
        if rec.overlaps(range.since_ns, range.until_ns) {
            slices.entry(rec.slice_id).or_insert(rec.slice);
        }
        true
    })?;
    let slices: Vec<(u32, String)> = slices.into_iter().collect();
    let mut w = IpfixWriter::new(BufWriter::new(file), 1, export_time, &slices)
        .map_err(|e| AuditError::io(out, e))?;
    let mut failed = None;
    reader::for_each_in_state(state_dir, |rec| {
        if !rec.overlaps(range.since_ns, range.until_ns) {
            return true;
        }
        match w.add(&rec) {
            Ok(()) => true,
            Err(e) => {
                failed = Some(e);
                false
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(AuditError::io(out, e));
    }
    let (_, stats) = w.finish().map_err(|e| AuditError::io(out, e))?;
    Ok(stats)
}

/// Write the capture rings of every sliver under `state_dir` in `range` to the pcapng file
/// `out`: one interface per sliver NIC, packets in time order.
pub fn pcapng(state_dir: &Path, range: ExportRange, out: &Path) -> Result<PcapngStats> {
    let mut stats = PcapngStats::default();
    let mut interfaces: BTreeMap<(String, u8), u32> = BTreeMap::new();
    let mut packets = Vec::new();
    let mut snaplen = 0u32;
    for dir in segment::sliver_dirs(state_dir)? {
        let ring = dir.join(RING_FILE);
        if !ring.exists() {
            continue;
        }
        let sliver = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let contents = read_ring(&ring)?;
        if contents.torn > 0 {
            log::warn!("{}: skipped {} torn slots", ring.display(), contents.torn);
        }
        stats.torn += contents.torn;
        snaplen = snaplen.max(u32::from(contents.geometry.snaplen));
        for p in contents.packets {
            if (range.since_ns..=range.until_ns).contains(&p.ts_ns) {
                interfaces.insert((sliver.clone(), p.nic), 0);
                packets.push((sliver.clone(), p));
            }
        }
    }
    packets.sort_by_key(|(_, p)| p.ts_ns);
    let io = |e| AuditError::io(out, e);
    let file = File::create(out).map_err(io)?;
    let mut w = PcapngWriter::new(BufWriter::new(file)).map_err(io)?;
    for ((sliver, nic), id) in interfaces.iter_mut() {
        *id = w
            .interface(&format!("{sliver}/eth{nic}"), snaplen)
            .map_err(io)?;
        stats.interfaces += 1;
    }
    for (sliver, p) in &packets {
        let interface = interfaces
            .get(&(sliver.clone(), p.nic))
            .copied()
            .unwrap_or(0);
        w.packet(&Packet {
            interface,
            ts_ns: p.ts_ns,
            orig_len: p.orig_len,
            data: &p.data,
            direction: p.direction,
            verdict: p.verdict,
        })
        .map_err(io)?;
        stats.packets += 1;
    }
    w.finish().map_err(io)?;
    Ok(stats)
}
