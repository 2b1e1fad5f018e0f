//! `GET /metrics`: the node's slivers in the Prometheus text exposition format (version
//! 0.0.4): how many are in each state, their packet counters and their shaping.

use vmm::stats::SliverCounters;

use crate::node::Node;
use crate::shares::slots::Shaping;

/// Per-sliver counter series: name, help, and which counter.
type Series = (&'static str, &'static str, fn(&SliverCounters) -> u64);

const SERIES: [Series; 5] = [
    (
        "slicevisor_sliver_tx_bytes_total",
        "Bytes the sliver's guest sent.",
        |c| c.tx_bytes,
    ),
    (
        "slicevisor_sliver_tx_packets_total",
        "Frames the sliver's guest sent.",
        |c| c.tx_packets,
    ),
    (
        "slicevisor_sliver_rx_bytes_total",
        "Bytes delivered to the sliver's guest.",
        |c| c.rx_bytes,
    ),
    (
        "slicevisor_sliver_rx_packets_total",
        "Frames delivered to the sliver's guest.",
        |c| c.rx_packets,
    ),
    (
        "slicevisor_sliver_drops_total",
        "Frames dropped in either direction.",
        |c| c.drops,
    ),
];

/// The node's metrics in the Prometheus text exposition format (version 0.0.4).
pub fn render(node: &Node) -> String {
    let mut out = String::from(
        "# HELP slicevisor_slivers Slivers defined on this node, by state.\n# TYPE slicevisor_slivers gauge\n",
    );
    for (state, count) in node.registry().count_by_state() {
        out.push_str(&format!(
            "slicevisor_slivers{{state=\"{}\"}} {count}\n",
            state.as_str()
        ));
    }
    let slivers = node.list();
    for (metric, help, get) in SERIES {
        out.push_str(&format!(
            "# HELP {metric} {help}\n# TYPE {metric} counter\n"
        ));
        for s in &slivers {
            out.push_str(&format!(
                "{metric}{{sliver=\"{}\",slice=\"{}\"}} {}\n",
                s.name,
                s.slice,
                get(&s.counters)
            ));
        }
    }
    for (metric, kind, help, get) in SHAPING_SERIES {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
        for s in &slivers {
            if let Some(v) = s.shaping.as_ref().and_then(get) {
                out.push_str(&format!(
                    "{metric}{{sliver=\"{}\",slice=\"{}\"}} {v}\n",
                    s.name, s.slice
                ));
            }
        }
    }
    out
}

type ShapingGauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Shaping) -> Option<f64>,
);

/// Per-sliver shaping series: allocated rates, bytes today, time throttled.
const SHAPING_SERIES: [ShapingGauge; 5] = [
    (
        "slicevisor_sliver_tx_allocated_bps",
        "gauge",
        "Rate allocated to the sliver's egress now, bit/s (absent: unlimited).",
        |s| s.tx_allocated_bps.map(|v| v as f64),
    ),
    (
        "slicevisor_sliver_rx_allocated_bps",
        "gauge",
        "Rate allocated to the sliver's ingress now, bit/s (absent: unlimited).",
        |s| s.rx_allocated_bps.map(|v| v as f64),
    ),
    (
        "slicevisor_sliver_tx_bytes_today",
        "gauge",
        "Bytes the sliver sent since midnight UTC (the daily budget's count).",
        |s| Some(s.tx_bytes_today as f64),
    ),
    (
        "slicevisor_sliver_tx_throttled_seconds_total",
        "counter",
        "Time the sliver's frames waited for egress tokens.",
        |s| Some(s.tx_throttled_ms as f64 / 1e3),
    ),
    (
        "slicevisor_sliver_rx_throttled_seconds_total",
        "counter",
        "Time frames for the sliver waited for ingress tokens.",
        |s| Some(s.rx_throttled_ms as f64 / 1e3),
    ),
];
