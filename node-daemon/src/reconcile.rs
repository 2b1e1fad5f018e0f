//! Convergence: make the host match the recorded state, one sliver at a time, idempotently.
//! It runs at start-up (before the socket is served), within each operation (for its
//! sliver) and every [`PERIOD`] (for all of them, and for what no record accounts for).
//!
//! For a recorded sliver: its TAP with exactly its host address and its shaper slot with its
//! limits (neither, for a sliver without a network device), its CPU weight (which depends on
//! every sliver's `cpu_share` and `cpu_pct`, so all of them are rewritten: `cpu_guarantee`),
//! and its VMM as the record says (adopted when one runs that nobody watches, its end
//! recorded when none runs, an interrupted stop finished, a VMM that should not run
//! stopped). Without a record: no VMM,
//! TAP, slot, disk, run file or capture ring of that name (the ring after its retention), and the
//! flow records expire by the audit retention policy. A name whose record file could not be
//! read is not known to be deleted: nothing of it is touched. Records whose write failed (a
//! full disk) are written again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::cpu_guarantee::{self, Demand};
use crate::error::SliverError;
use crate::host_net;
use crate::node::Node;
use crate::vmm_procs;

/// How often everything is converged.
pub const PERIOD: Duration = Duration::from_secs(10);

impl Node {
    /// Converge sliver `name` (taking its lock).
    pub async fn converge(self: &Arc<Self>, name: &str) -> Result<(), SliverError> {
        let _lock = self.locks.lock(name).await;
        self.converge_locked(name).await
    }

    /// Converge sliver `name`, and every sliver's CPU weight (a create, change or delete of
    /// one changes the others'); the caller holds its lock.
    pub(crate) async fn converge_locked(self: &Arc<Self>, name: &str) -> Result<(), SliverError> {
        let running = self.running_vmms_of(name);
        let converged = self.converge_with(name, &running).await;
        self.sync_cpu_weights();
        converged
    }

    /// The VMMs of sliver `name` that run now, as [`vmm_procs::scan`] would find them. A full
    /// scan reads every process's `/proc/PID/cmdline` (two processes per running sliver), so
    /// with cgroups the processes of its cgroup and its recorded pid are looked at first:
    /// every VMM the daemon starts joins its cgroup before exec. The full scan is still made
    /// when that finds none and one may run elsewhere (started by a daemon without cgroups):
    /// when the sliver's audit log has a writer (every VMM the daemon starts holds its lock),
    /// or when its record says a VMM should run but nobody watches one.
    fn running_vmms_of(&self, name: &str) -> HashMap<String, Vec<u32>> {
        let run_dir = self.supervisor.run_dir();
        let Some(cgroups) = self.supervisor.cgroups() else {
            return vmm_procs::scan(run_dir);
        };
        let record = self.registry.get(name).ok();
        let recorded = record.as_ref().and_then(|r| r.pid);
        let found = vmm_procs::scan_among(cgroups.procs(name).into_iter().chain(recorded), run_dir);
        if found.contains_key(name) {
            return found;
        }
        let unwatched = record
            .is_some_and(|r| crate::supervisor::active(r.state) && !self.supervisor.watching(name));
        if unwatched
            || audit_store::writer::has_writer(&audit_store::sliver_dir(&self.state_dir, name))
        {
            vmm_procs::scan(run_dir)
        } else {
            found
        }
    }

    /// Give every sliver's cgroup its CPU weight as the records say now: its share's, or
    /// more for a `cpu_pct` ([`cpu_guarantee::weights`] over all the node's slivers, started
    /// or not, so that starting or stopping one changes nobody's). Kept by the cgroups for
    /// slivers not started yet; a failed write is logged, the next convergence retries.
    pub(crate) fn sync_cpu_weights(&self) {
        let Some(cgroups) = self.supervisor.cgroups() else {
            return;
        };
        let written = cgroups.set_weights(|unit| {
            let slivers = self.registry.list();
            let demands: Vec<Demand> = slivers
                .iter()
                .map(|(_, r)| Demand {
                    share: r.spec.cpu_share,
                    pct: r.spec.cpu_pct,
                })
                .collect();
            let weights = cpu_guarantee::weights(&demands, cpu_guarantee::node_cpus(), unit);
            slivers.into_iter().map(|(n, _)| n).zip(weights).collect()
        });
        if let Err(e) = written {
            log::error!("CPU weights: {e}");
        }
    }

    /// Converge sliver `name` given the VMMs `running`; every part is tried, the first
    /// error is returned.
    async fn converge_with(
        self: &Arc<Self>,
        name: &str,
        running: &HashMap<String, Vec<u32>>,
    ) -> Result<(), SliverError> {
        if self.registry.is_unreadable(name) {
            return Ok(());
        }
        let Ok(record) = self.registry.get(name) else {
            for &pid in running.get(name).into_iter().flatten() {
                log::warn!("VMM {pid} of deleted sliver {name} runs: stopping it");
                self.supervisor.terminate(name, pid).await;
            }
            self.remove_host_side(name).await;
            return Ok(());
        };
        let net = match &record.spec.net {
            Some(net) => match self.ensure_tap(name, net).await {
                Ok(()) => self.claim_slot(name, net),
                Err(e) => Err(e),
            },
            None => {
                self.remove_tap(name).await;
                self.release_slot(name);
                Ok(())
            }
        };
        if self.supervisor.converge(name, running).await {
            // A stop was cut off (by a daemon restart): finish it, in its own time.
            let me = self.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                let _lock = me.locks.lock(&name).await;
                if let Err(e) = me.supervisor.stop(&name).await {
                    log::error!("sliver {name}: finishing its stop: {e}");
                }
            });
        }
        net
    }

    /// Converge every sliver, then remove what no record accounts for. Slivers busy with an
    /// operation are left to it (it converges them itself).
    pub async fn reconcile_all(self: &Arc<Self>) {
        let running = vmm_procs::scan(self.supervisor.run_dir());
        let slotted: Vec<String> = self
            .ledger
            .slots()
            .filter(|(_, s)| s.is_used())
            .map(|(_, s)| s.name())
            .collect();
        let records = self.registry.list();
        let recorded: BTreeSet<&str> = records.iter().map(|(n, _)| n.as_str()).collect();
        for name in &recorded {
            if let Some(_lock) = self.locks.try_lock(name) {
                if let Err(e) = self.converge_with(name, &running).await {
                    log::error!("sliver {name}: converging: {e}");
                }
            }
        }
        // Strays known by name: VMMs, slots, disks and cgroups. Each is checked again under
        // its name's lock.
        let disked = self.disks.names();
        let cgrouped = self
            .supervisor
            .cgroups()
            .map(crate::sliver_cgroups::Cgroups::names)
            .unwrap_or_default();
        let strays: BTreeSet<&str> = running
            .keys()
            .map(String::as_str)
            .chain(slotted.iter().map(String::as_str))
            .chain(disked.iter().map(String::as_str))
            .chain(cgrouped.iter().map(String::as_str))
            .filter(|n| !recorded.contains(n))
            .collect();
        for name in strays {
            if let Some(_lock) = self.locks.try_lock(name) {
                if !self.registry.contains(name) {
                    let _ = self.converge_with(name, &running).await;
                }
            }
        }
        self.sync_cpu_weights();
        self.remove_stray_taps().await;
        if let Err(e) = self.sync_rules(true).await {
            log::error!("reconcile: {e}");
        }
        let unwritten = self.registry.flush_deferred();
        if unwritten > 0 {
            log::warn!("reconcile: {unwritten} record(s) still not written (disk full?)");
        }
        self.sweep_run_dir();
        self.expire_audit_data(&running);
    }

    /// Remove the sliver TAPs no record asks for. Taking turns with every TAP made or
    /// removed, the host's TAPs and the records are listed, then the strays removed.
    async fn remove_stray_taps(&self) {
        let _taps = self.taps.lock().await;
        let taps = match host_net::sliver_taps(&self.netlink).await {
            Ok(taps) => taps,
            Err(e) => {
                log::error!("reconcile: {e}");
                return;
            }
        };
        let wanted: BTreeSet<String> = self
            .registry
            .list()
            .iter()
            .filter(|(_, r)| r.spec.net.is_some())
            .map(|(n, _)| n.clone())
            .chain(self.registry.unreadable_names())
            .map(|n| host_net::tap_name(&n))
            .collect();
        for tap in taps.iter().filter(|t| !wanted.contains(*t)) {
            log::info!("reconcile: removing TAP {tap}, which no sliver has");
            if let Err(e) = host_net::remove_tap(&self.netlink, tap).await {
                log::error!("reconcile: {e}");
            }
        }
    }

    /// The run directory: the directories of slivers that no longer exist (and files of an
    /// older layout), and temporary files a full disk left in the others.
    fn sweep_run_dir(&self) {
        let Ok(entries) = std::fs::read_dir(self.supervisor.run_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let name = file.split('.').next().unwrap_or_default();
            let Some(_lock) = self.locks.try_lock(name) else {
                continue;
            };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            let known = self.registry.contains(name) || self.registry.is_unreadable(name);
            if is_dir && known {
                let leftovers = std::fs::read_dir(entry.path())
                    .into_iter()
                    .flatten()
                    .flatten();
                for tmp in leftovers.filter(|f| f.file_name().to_string_lossy().ends_with(".tmp")) {
                    let _ = std::fs::remove_file(tmp.path());
                }
            } else if is_dir {
                let _ = std::fs::remove_dir_all(entry.path());
            } else if file.ends_with(".tmp") || !known || file.contains('.') {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Audit data of slivers whose VMM is not running: flow records by the retention
    /// policy, and deleted slivers' capture rings once their retention has passed.
    fn expire_audit_data(&self, running: &HashMap<String, Vec<u32>>) {
        let Ok(dirs) = audit_store::segment::sliver_dirs(&self.state_dir) else {
            return;
        };
        let now = SystemTime::now();
        for dir in dirs {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let Some(_lock) = self.locks.try_lock(&name) else {
                continue;
            };
            let writing = running.contains_key(&name)
                || self.supervisor.watching(&name)
                || audit_store::writer::has_writer(&dir);
            if writing || self.registry.is_unreadable(&name) {
                continue;
            }
            if let Err(e) = audit_store::retention::apply(&dir, &self.retention.flows, now, None) {
                log::error!("audit retention for {}: {e}", dir.display());
            }
            if !self.registry.contains(&name) {
                let ring = dir.join(audit_store::capture::RING_FILE);
                let expired = std::fs::metadata(&ring)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| {
                        now.duration_since(t)
                            .is_ok_and(|age| age >= self.retention.capture_after_delete)
                    });
                if expired {
                    self.remove_capture_ring(&name);
                }
            }
        }
    }

    /// Converge everything every [`PERIOD`], for as long as the daemon runs.
    pub fn spawn_periodic(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                me.reconcile_all().await;
            }
        })
    }
}
