use super::*;
use crate::audit::params::QueryRequest;
use crate::audit::{synth, AuditConfig, AuditLog};
use std::time::Duration;

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
