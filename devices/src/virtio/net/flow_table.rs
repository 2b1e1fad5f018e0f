//! The flow table: per-flow packet and byte counts, NetFlow-style. A flow ends after
//! `idle_timeout` without packets, and a long flow is cut every `active_timeout`; ended flows
//! go to the sink. Bounded: when the table is full, the packet is reported as a flow of its
//! own (counted), so the packet path never waits or allocates beyond the table's capacity.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::time::Duration;

use packet::{Direction, Verdict};
use rustc_hash::FxHasher;

use super::saturating_nanos;

/// What identifies a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Seen from the guest.
    pub direction: Direction,
    /// VLAN tags in front of the EtherType (0: untagged).
    pub vlan_tags: u8,
    /// EtherType (inside the tags).
    pub ethertype: u16,
    /// Source address (IP frames).
    pub src: Option<IpAddr>,
    /// Destination address (IP frames).
    pub dst: Option<IpAddr>,
    /// IP protocol (0 for non-IP).
    pub protocol: u8,
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// What the VMM did with its packets.
    pub verdict: Verdict,
}

/// What a flow did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// First packet, ns since the Unix epoch.
    pub first_ns: u64,
    /// Last packet.
    pub last_ns: u64,
    /// Packets.
    pub packets: u64,
    /// Bytes (whole frames).
    pub bytes: u64,
    /// IP bytes: each IP packet's own length (IPv4 total length, IPv6 40 + payload length),
    /// without Ethernet header, tags and padding; 0 for non-IP frames.
    pub ip_bytes: u64,
    /// OR of the TCP flags.
    pub tcp_flags: u8,
}

/// Where ended flows go (the VMM's audit log). Must not block.
pub trait FlowSink: Send {
    /// One ended flow.
    fn flow(&mut self, key: &FlowKey, stats: &FlowStats);
}

/// Timeouts and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowConfig {
    /// A flow without packets for this long has ended.
    pub idle_timeout: Duration,
    /// A flow is reported (and restarted) at least this often.
    pub active_timeout: Duration,
    /// Most flows held at once.
    pub capacity: usize,
}

impl Default for FlowConfig {
    /// NetFlow's usual 15 s idle and 60 s active timeouts; 16 384 flows.
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(15),
            active_timeout: Duration::from_secs(60),
            capacity: 16_384,
        }
    }
}

/// `packets` packets of `bytes` (`ip_bytes` of them their IP packets) more for a flow, the
/// last at `now_ns`.
#[inline]
fn add(s: &mut FlowStats, now_ns: u64, (packets, bytes, ip_bytes): (u64, u64, u64), flags: u8) {
    s.last_ns = now_ns;
    s.packets += packets;
    s.bytes += bytes;
    s.ip_bytes += ip_bytes;
    s.tcp_flags |= flags;
}

/// The table.
pub struct FlowTable {
    flows: HashMap<FlowKey, FlowStats, BuildHasherDefault<FxHasher>>,
    /// Per direction, the flow of the last packet, kept out of the map: the next packets of
    /// a burst cost a key comparison instead of a hash lookup.
    hot: [Option<(FlowKey, FlowStats)>; 2],
    config: FlowConfig,
    /// `config.active_timeout` in ns (converted once, not per packet).
    active_ns: u64,
    /// Packets reported on their own because the table was full.
    pub overflow: u64,
}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable")
            .field("flows", &self.flows.len())
            .field("overflow", &self.overflow)
            .finish()
    }
}

impl FlowTable {
    /// An empty table (allocated once, to its capacity).
    pub fn new(config: FlowConfig) -> Self {
        Self {
            flows: HashMap::with_capacity_and_hasher(config.capacity, Default::default()),
            hot: [None, None],
            active_ns: saturating_nanos(config.active_timeout),
            config,
            overflow: 0,
        }
    }

    /// Flows held now.
    pub fn len(&self) -> usize {
        self.flows.len() + self.hot.iter().filter(|h| h.is_some()).count()
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Count `packets` packets of `bytes` in all (`ip_bytes` of them their IP packets) at
    /// `now_ns`.
    #[inline]
    pub fn record(
        &mut self,
        key: &FlowKey,
        now_ns: u64,
        counts: (u64, u64, u64),
        tcp_flags: u8,
        sink: &mut dyn FlowSink,
    ) {
        // The common case, inlined into the caller: another packet of the direction's last
        // flow.
        let d = key.direction.index();
        if let Some((k, s)) = &mut self.hot[d] {
            if k == key {
                add(s, now_ns, counts, tcp_flags);
                if now_ns.saturating_sub(s.first_ns) >= self.active_ns {
                    sink.flow(k, s);
                    self.hot[d] = None;
                }
                return;
            }
        }
        self.record_other(*key, now_ns, counts, tcp_flags, sink);
    }

    /// [`FlowTable::record`] for a packet of another flow than the direction's last.
    #[inline(never)]
    fn record_other(
        &mut self,
        key: FlowKey,
        now_ns: u64,
        counts: (u64, u64, u64),
        tcp_flags: u8,
        sink: &mut dyn FlowSink,
    ) {
        let d = key.direction.index();
        let active_ns = self.active_ns;
        // Another flow: the hot one goes back into the map, this one comes out of it.
        if let Some((k, s)) = self.hot[d].take() {
            self.flows.insert(k, s);
        }
        let stats = match self.flows.remove(&key) {
            Some(mut s) => {
                add(&mut s, now_ns, counts, tcp_flags);
                s
            }
            None => {
                let (packets, bytes, ip_bytes) = counts;
                let first = FlowStats {
                    first_ns: now_ns,
                    last_ns: now_ns,
                    packets,
                    bytes,
                    ip_bytes,
                    tcp_flags,
                };
                if self.len() >= self.config.capacity {
                    // No room: the packet is reported as a flow of its own.
                    self.overflow += 1;
                    sink.flow(&key, &first);
                    return;
                }
                first
            }
        };
        if now_ns.saturating_sub(stats.first_ns) >= active_ns {
            sink.flow(&key, &stats);
        } else {
            self.hot[d] = Some((key, stats));
        }
    }

    /// Report and forget the flows idle since `idle_timeout` at `now_ns`.
    pub fn expire(&mut self, now_ns: u64, sink: &mut dyn FlowSink) {
        let idle = saturating_nanos(self.config.idle_timeout);
        for hot in &mut self.hot {
            if let Some((k, s)) = hot {
                if now_ns.saturating_sub(s.last_ns) >= idle {
                    sink.flow(k, s);
                    *hot = None;
                }
            }
        }
        self.flows.retain(|k, s| {
            let ended = now_ns.saturating_sub(s.last_ns) >= idle;
            if ended {
                sink.flow(k, s);
            }
            !ended
        });
    }

    /// Report and forget every flow (at exit).
    pub fn drain(&mut self, sink: &mut dyn FlowSink) {
        for (k, s) in self.hot.iter_mut().filter_map(Option::take) {
            sink.flow(&k, &s);
        }
        for (k, s) in self.flows.drain() {
            sink.flow(&k, &s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<(FlowKey, FlowStats)>);
    impl FlowSink for Collect {
        fn flow(&mut self, key: &FlowKey, stats: &FlowStats) {
            self.0.push((*key, *stats));
        }
    }

    fn key(port: u16) -> FlowKey {
        FlowKey {
            direction: Direction::Tx,
            vlan_tags: 0,
            ethertype: 0x0800,
            src: Some("10.0.0.2".parse().expect("ip")),
            dst: Some("10.0.0.1".parse().expect("ip")),
            protocol: 6,
            src_port: port,
            dst_port: 80,
            verdict: Verdict::Forwarded,
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn packets_add_up_and_idle_flows_end() {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut sink = Collect::default();
        t.record(&key(1), S, (1, 100, 86), 0x02, &mut sink);
        t.record(&key(1), 2 * S, (1, 200, 186), 0x10, &mut sink);
        t.record(&key(2), 10 * S, (1, 60, 46), 0, &mut sink);
        t.expire(17 * S, &mut sink);
        assert_eq!(sink.0.len(), 1, "only flow 1 idle for 15 s");
        let (k, s) = sink.0[0];
        assert_eq!(k.src_port, 1);
        assert_eq!(
            (s.packets, s.bytes, s.ip_bytes, s.tcp_flags),
            (2, 300, 272, 0x12)
        );
        assert_eq!((s.first_ns, s.last_ns), (S, 2 * S));
        t.drain(&mut sink);
        assert_eq!(sink.0.len(), 2);
        assert!(t.is_empty());
    }

    #[test]
    fn interleaved_flows_and_directions_count_exactly() {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut sink = Collect::default();
        let rx = FlowKey {
            direction: Direction::Rx,
            ..key(9)
        };
        for i in 0..300u64 {
            let k = match i % 3 {
                0 => key(1),
                1 => rx,
                _ if i % 2 == 0 => key(2),
                _ => key(1),
            };
            t.record(&k, S + i, (1, 10, 0), 0, &mut sink);
        }
        assert_eq!(t.len(), 3);
        t.drain(&mut sink);
        let packets = |k: FlowKey| {
            sink.0
                .iter()
                .filter(|(f, _)| *f == k)
                .map(|(_, s)| s.packets)
                .sum::<u64>()
        };
        assert_eq!(packets(rx), 100);
        assert_eq!(packets(key(1)) + packets(key(2)), 200);
        assert_eq!(packets(key(2)), 50);
        assert_eq!(sink.0.len(), 3, "one record per flow");
    }

    #[test]
    fn long_flows_are_cut_at_the_active_timeout() {
        let mut t = FlowTable::new(FlowConfig::default());
        let mut sink = Collect::default();
        for sec in 0..=130 {
            t.record(&key(1), sec * S, (1, 10, 0), 0, &mut sink);
        }
        assert_eq!(sink.0.len(), 2, "cut at 60 s and 121 s");
        assert_eq!(sink.0[0].1.packets, 61);
    }

    #[test]
    fn a_full_table_reports_packets_alone_and_never_grows() {
        let mut t = FlowTable::new(FlowConfig {
            capacity: 4,
            ..FlowConfig::default()
        });
        let mut sink = Collect::default();
        for p in 0..10 {
            t.record(&key(p), S, (1, 10, 0), 0, &mut sink);
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.overflow, 6);
        assert_eq!(sink.0.len(), 6);
        // Existing flows still count.
        t.record(&key(0), 2 * S, (1, 10, 0), 0, &mut sink);
        t.drain(&mut sink);
        let f0 = sink
            .0
            .iter()
            .find(|(k, _)| k.src_port == 0)
            .expect("flow 0");
        assert_eq!(f0.1.packets, 2);
    }
}
