//! `--stats-file`: the VMM's packet counters, written as JSON once a second and at exit, for
//! whoever supervises it (the node daemon reads them for `GET /slivers/{name}` and `/metrics`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use devices::virtio::net::{NetCounters, NetCountersSnapshot};
use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

/// How often the file is rewritten.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Counters of all the VMM's network devices together. "tx" is what the guest sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliverCounters {
    /// Frames the guest sent.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames the guest received.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames dropped in either direction.
    pub drops: u64,
    /// Malformed descriptor chains from the guest.
    pub malformed_chains: u64,
}

impl SliverCounters {
    /// Sum of the devices' counters.
    pub fn sum(nets: &[Arc<NetCounters>]) -> Self {
        nets.iter()
            .map(|n| n.snapshot())
            .fold(Self::default(), |acc, c: NetCountersSnapshot| Self {
                tx_packets: acc.tx_packets + c.tx_packets,
                tx_bytes: acc.tx_bytes + c.tx_bytes,
                rx_packets: acc.rx_packets + c.rx_packets,
                rx_bytes: acc.rx_bytes + c.rx_bytes,
                drops: acc.drops + c.tx_dropped + c.rx_dropped,
                malformed_chains: acc.malformed_chains + c.malformed_chains,
            })
    }

    /// Write to `path` atomically (rename over the previous file).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(
            &tmp,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )
        .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            // A full disk: leave no partial file behind.
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Read a file written by [`SliverCounters::write`].
    pub fn read(path: &Path) -> std::io::Result<Self> {
        serde_json::from_slice(&std::fs::read(path)?).map_err(std::io::Error::other)
    }
}

/// Event-loop subscriber that rewrites the stats file on a timer.
pub struct StatsWriter {
    path: PathBuf,
    nets: Vec<Arc<NetCounters>>,
    timer: TimerFd,
}

impl std::fmt::Debug for StatsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatsWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl StatsWriter {
    /// Write `nets`' counters to `path` every [`INTERVAL`].
    pub fn new(path: PathBuf, nets: Vec<Arc<NetCounters>>) -> std::io::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(INTERVAL, Some(INTERVAL))?;
        let writer = Self { path, nets, timer };
        writer.write_now();
        Ok(writer)
    }

    /// Write the current counters (also called at exit).
    pub fn write_now(&self) {
        if let Err(e) = SliverCounters::sum(&self.nets).write(&self.path) {
            log::warn!("--stats-file {}: {e}", self.path.display());
        }
    }
}

impl MutEventSubscriber for StatsWriter {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.timer.wait();
        self.write_now();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("stats timer: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    #[test]
    fn sums_devices_and_roundtrips() {
        let a = Arc::new(NetCounters::default());
        let b = Arc::new(NetCounters::default());
        a.tx.packets.store(2, Ordering::Relaxed);
        a.tx.bytes.store(100, Ordering::Relaxed);
        b.tx.packets.store(3, Ordering::Relaxed);
        b.rx.dropped.store(4, Ordering::Relaxed);
        a.tx.dropped.store(1, Ordering::Relaxed);
        let s = SliverCounters::sum(&[a.clone(), b]);
        assert_eq!((s.tx_packets, s.tx_bytes, s.drops), (5, 100, 5));
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("stats.json");
        let w = StatsWriter::new(path.clone(), vec![a]).expect("writer");
        assert_eq!(SliverCounters::read(&path).expect("read").tx_packets, 2);
        drop(w);
    }
}
