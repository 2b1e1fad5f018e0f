//! "Which slice and sliver had this flow at that time?": reads every sliver directory of a
//! state dir, opening only segments whose time span (from the index name) overlaps the window,
//! and only blocks whose span overlaps it and whose Bloom filter may hold the address.
//! [`run`] is what `slicevisor audit query` and the node's `GET /audit` call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;

use packet::Direction;
use serde::Serialize;

use super::codec::Peek;
use super::error::{AuditError, Result};
use super::index;
use super::nat_log::{self, NatRecord};
use super::params::{format_time, QueryParams};
use super::reader;
use super::record::FlowRecord;
use super::segment::{self, Segment};
use super::span;

/// One flow of the answer, with its times also as RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowView {
    /// The record.
    #[serde(flatten)]
    pub record: FlowRecord,
    /// The node's address and port the outside saw, for a TX flow through the node's
    /// masquerade (`ADDR:PORT`, from [`nat_log`](super::nat_log)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
    /// First packet, RFC 3339.
    pub first: String,
    /// Last packet, RFC 3339.
    pub last: String,
}

/// A sliver that had matching flows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliverMatch {
    /// Slice name.
    pub slice: String,
    /// Numeric slice id.
    pub slice_id: u32,
    /// Sliver name.
    pub sliver: String,
    /// Matching flows.
    pub flows: u64,
    /// Their packets.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Earliest first packet, RFC 3339.
    pub first: String,
    /// Latest last packet, RFC 3339.
    pub last: String,
}

/// How much reading a query took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueryStats {
    /// Segments listed: those of the days the window can reach, in every sliver directory
    /// (`segment::scan_window`).
    pub segments_total: u64,
    /// Segments opened (time span overlaps the window).
    pub segments_opened: u64,
    /// Unindexed segments read whole (the ones being written).
    pub segments_scanned: u64,
    /// Indexed blocks read.
    pub blocks_read: u64,
    /// Records validated (CRC) in the blocks and segments read.
    pub records_examined: u64,
    /// Of those, records whose time and addresses matched and were decoded whole.
    pub records_decoded: u64,
}

/// The answer: slivers first, then the flows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryAnswer {
    /// Start of the window, RFC 3339.
    pub from: String,
    /// End of the window, RFC 3339.
    pub to: String,
    /// Slivers with matching flows, by slice then sliver.
    pub slivers: Vec<SliverMatch>,
    /// Matching flows by first packet, at most `limit`.
    pub flows: Vec<FlowView>,
    /// More flows matched than `limit`.
    pub truncated: bool,
    /// Reading done.
    pub stats: QueryStats,
}

/// Whether `rec` matches every filter of `p`.
pub fn matches(rec: &FlowRecord, p: &QueryParams) -> bool {
    rec.overlaps(p.from_ns(), p.to_ns())
        && p.dst.is_none_or(|a| rec.dst == Some(a))
        && p.src.is_none_or(|a| rec.src == Some(a))
        && p.slice.as_deref().is_none_or(|s| rec.slice == s)
        && p.port
            .is_none_or(|port| rec.src_port == port || rec.dst_port == port)
}

/// Answer `p` from the audit logs under `state_dir`.
pub fn run(state_dir: &Path, p: &QueryParams) -> Result<QueryAnswer> {
    let mut stats = QueryStats::default();
    let mut found = Vec::new();
    for dir in segment::sliver_dirs(state_dir)? {
        query_dir(&dir, p, &mut stats, &mut found)?;
    }
    let mut seen = HashSet::new();
    found.retain(|r: &FlowRecord| seen.insert((r.sliver.clone(), r.seq)));
    found.sort_by(|a, b| (a.first_ns, &a.sliver, a.seq).cmp(&(b.first_ns, &b.sliver, b.seq)));
    let mut found = public_sides(state_dir, found);
    if let Some(port) = p.public_port {
        found.retain(|(_, public)| public.as_ref().is_some_and(|n| n.public_port == port));
    }
    let (mut found, publics): (Vec<FlowRecord>, Vec<Option<NatRecord>>) = found.into_iter().unzip();
    let slivers = summarize(&found);
    let truncated = found.len() > p.limit;
    found.truncate(p.limit);
    Ok(QueryAnswer {
        from: format_time(p.from_ns()),
        to: format_time(p.to_ns()),
        slivers,
        flows: found
            .into_iter()
            .zip(publics)
            .map(|(record, public)| FlowView {
                public: public.map(|n| SocketAddr::new(n.public_addr, n.public_port).to_string()),
                first: format_time(record.first_ns),
                last: format_time(record.last_ns),
                record,
            })
            .collect(),
        truncated,
        stats,
    })
}

/// Each flow with its public side: for TX flows, the NAT mapping its sliver's log has for
/// it, if any.
fn public_sides(state_dir: &Path, found: Vec<FlowRecord>) -> Vec<(FlowRecord, Option<NatRecord>)> {
    let mut logs: HashMap<String, Vec<NatRecord>> = HashMap::new();
    found
        .into_iter()
        .map(|r| {
            let public = (r.direction == Direction::Tx)
                .then(|| {
                    logs.entry(r.sliver.clone())
                        .or_insert_with(|| {
                            nat_log::read(&segment::sliver_dir(state_dir, &r.sliver))
                        })
                        .iter()
                        .rev()
                        .find(|n| {
                            n.is_of(
                                r.protocol, r.src, r.src_port, r.dst, r.dst_port, r.first_ns,
                                r.last_ns,
                            )
                        })
                        .cloned()
                })
                .flatten();
            (r, public)
        })
        .collect()
}

/// One line per (slice, sliver) of the matching flows.
fn summarize(found: &[FlowRecord]) -> Vec<SliverMatch> {
    let mut by: BTreeMap<(&str, &str), (SliverMatch, u64, u64)> = BTreeMap::new();
    for r in found {
        let (m, first, last) = by.entry((&r.slice, &r.sliver)).or_insert_with(|| {
            let m = SliverMatch {
                slice: r.slice.clone(),
                slice_id: r.slice_id,
                sliver: r.sliver.clone(),
                flows: 0,
                packets: 0,
                bytes: 0,
                first: String::new(),
                last: String::new(),
            };
            (m, u64::MAX, 0)
        });
        m.flows += 1;
        m.packets += r.packets;
        m.bytes += r.bytes;
        *first = (*first).min(r.first_ns);
        *last = (*last).max(r.last_ns);
    }
    by.into_values()
        .map(|(m, first, last)| SliverMatch {
            first: format_time(first),
            last: format_time(last),
            ..m
        })
        .collect()
}

fn query_dir(
    dir: &Path,
    p: &QueryParams,
    stats: &mut QueryStats,
    found: &mut Vec<FlowRecord>,
) -> Result<()> {
    let (from, to) = (p.from_ns(), p.to_ns());
    for seg in segment::scan_window(dir, from, to)? {
        stats.segments_total += 1;
        let span = match (&seg.index, &seg.span) {
            (Some(idx), _) => Some((idx.min_first, idx.max_last)),
            (None, Some(path)) => span::read(path),
            (None, None) => None,
        };
        if let Some((min_first, max_last)) = span {
            if min_first > to || max_last < from {
                continue;
            }
        }
        stats.segments_opened += 1;
        let mut examined = 0u64;
        let mut decoded = 0u64;
        let mut take = |rec: FlowRecord, _: u64, _: usize| {
            decoded += 1;
            if matches(&rec, p) {
                found.push(rec);
            }
        };
        match seg.index.as_ref().and_then(index::open) {
            Some(idx) => {
                let file = match File::open(&seg.path) {
                    Ok(f) => f,
                    // Retention may delete a segment between listing and reading.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(AuditError::io(&seg.path, e)),
                };
                for (i, block) in idx.blocks.iter().enumerate() {
                    if !block.overlaps(from, to) || !bloom_may_match(&idx, i, p) {
                        continue;
                    }
                    stats.blocks_read += 1;
                    let mut buf = vec![0u8; block.len as usize];
                    file.read_exact_at(&mut buf, block.offset)
                        .map_err(|e| AuditError::io(&seg.path, e))?;
                    let report = reader::scan_if(&buf, block.offset, keep(p), &mut take);
                    reader::log_damage(&seg.path, &report);
                    examined += report.records;
                }
            }
            None => {
                stats.segments_scanned += 1;
                examined += scan_whole(&seg, p, &mut take)?;
            }
        }
        stats.records_examined += examined;
        stats.records_decoded += decoded;
    }
    Ok(())
}

fn bloom_may_match(idx: &index::IndexReader, i: usize, p: &QueryParams) -> bool {
    if p.dst.is_none() && p.src.is_none() {
        return true;
    }
    match idx.bloom(i) {
        Some(bloom) => [p.dst, p.src]
            .iter()
            .flatten()
            .all(|a| bloom.may_contain(a)),
        None => true,
    }
}

/// Peeked fields a record must have to be worth decoding for `p`.
fn keep(p: &QueryParams) -> impl FnMut(&Peek) -> bool + '_ {
    let (from, to) = (p.from_ns(), p.to_ns());
    move |pk: &Peek| {
        pk.first_ns <= to
            && pk.last_ns >= from
            && p.dst.is_none_or(|a| pk.dst == Some(a))
            && p.src.is_none_or(|a| pk.src == Some(a))
    }
}

/// Read a whole (unindexed) segment; returns the records validated.
fn scan_whole(
    seg: &Segment,
    p: &QueryParams,
    take: &mut impl FnMut(FlowRecord, u64, usize),
) -> Result<u64> {
    let buf = match fs::read(&seg.path) {
        Ok(b) => b,
        // Retention may delete a segment between listing and reading.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(AuditError::io(&seg.path, e)),
    };
    let report = reader::scan_if(&buf, 0, keep(p), take);
    reader::log_damage(&seg.path, &report);
    Ok(report.records)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::params::QueryRequest;
    use crate::{synth, AuditConfig, AuditLog};

    const T0: u64 = 1_795_834_800_000_000_000; // 2026-11-28T03:00:00Z
    const S: u64 = 1_000_000_000;

    /// `n` records of `sliver`, one per second from `start`, in segments of ~100 records.
    fn write(state: &Path, sliver: &str, start: u64, n: u64, keep_open: bool) -> Option<AuditLog> {
        let config = AuditConfig {
            segment_bytes: 8 * 1024,
            ..AuditConfig::default()
        };
        let (log, _) = AuditLog::open(&state.join("audit").join(sliver), config).expect("open");
        for i in 0..n {
            log.append(&synth::flow(i, sliver, start + i * S))
                .expect("append");
            if i % 100 == 99 {
                log.flush(Duration::from_secs(5));
            }
        }
        log.flush(Duration::from_secs(5));
        keep_open.then_some(log)
    }

    fn ask(state: &Path, at: u64, window: &str, dst: Option<&str>) -> QueryAnswer {
        let req = QueryRequest {
            at: Some(format_time(at)),
            window: Some(window.into()),
            dst: dst.map(str::to_string),
            ..QueryRequest::default()
        };
        run(state, &req.parse("").expect("parse")).expect("query")
    }

    #[test]
    fn finds_the_sliver_and_reads_only_overlapping_segments_and_blocks() {
        let state = tempfile::tempdir().expect("tempdir");
        write(state.path(), "alpha", T0, 1000, false);
        let _open = write(state.path(), "beta", T0 + 5000 * S, 50, true);
        // Record 501 of alpha (seq 502): IPv4, last packet T0+501 s, dst 192.0.2.(501 % 7).
        let a = ask(state.path(), T0 + 501 * S, "0s", Some("192.0.2.4"));
        assert_eq!(a.slivers.len(), 1);
        assert_eq!(a.slivers[0].sliver, "alpha");
        assert_eq!(a.slivers[0].slice, "slice0");
        assert!(a.flows.iter().any(|f| f.record.seq == 502));
        assert!(a
            .flows
            .iter()
            .all(|f| f.record.dst == Some("192.0.2.4".parse().expect("ip"))));
        assert!(a.stats.segments_total > 10, "{:?}", a.stats);
        assert!(
            a.stats.segments_opened < a.stats.segments_total / 2,
            "{:?}",
            a.stats
        );
        // The open segment of beta has no index yet: it is scanned whole.
        let b = ask(state.path(), T0 + 5010 * S, "2s", None);
        assert!(b.slivers.iter().any(|s| s.sliver == "beta"));
        assert_eq!(b.stats.segments_scanned, 1);
        // Nothing at a time no record covers.
        let none = ask(state.path(), T0 + 3000 * S, "10s", Some("192.0.2.3"));
        assert!(none.slivers.is_empty() && none.flows.is_empty());
        assert_eq!(
            none.stats.segments_opened, 0,
            "beta's open segment (no index yet) is skipped by its span file"
        );
    }

    #[test]
    fn records_around_midnight_are_found_on_both_days() {
        // 2026-11-28T23:58:20Z, then one record a second for 200 s: the batches fall on two
        // day directories, whatever day it is now.
        let start = 1_795_910_300 * S;
        let state = tempfile::tempdir().expect("tempdir");
        write(state.path(), "alpha", start, 200, false);
        let dir = state.path().join("audit").join("alpha");
        let days: Vec<Option<String>> = segment::list(&dir)
            .expect("list")
            .iter()
            .map(|s| s.day().map(str::to_string))
            .collect();
        assert!(days.contains(&Some("2026-11-28".into())), "{days:?}");
        assert!(days.contains(&Some("2026-11-29".into())), "{days:?}");
        for at in [start + 50 * S, start + 150 * S] {
            let a = ask(state.path(), at, "1s", None);
            assert!(
                a.slivers.iter().all(|m| m.sliver == "alpha") && !a.flows.is_empty(),
                "at {}: {a:?}",
                format_time(at)
            );
        }
    }

    #[test]
    fn the_limit_truncates_flows_not_the_summary() {
        let state = tempfile::tempdir().expect("tempdir");
        write(state.path(), "alpha", T0, 300, false);
        let req = QueryRequest {
            at: Some(format_time(T0 + 150 * S)),
            window: Some("1h".into()),
            limit: Some("10".into()),
            ..QueryRequest::default()
        };
        let a = run(state.path(), &req.parse("").expect("parse")).expect("query");
        assert!(a.truncated);
        assert_eq!(a.flows.len(), 10);
        assert_eq!(a.slivers.iter().map(|s| s.flows).sum::<u64>(), 300);
    }
}
