//! The daemon's in-memory view of its slivers, kept in step with the state directory: every
//! change is written (atomically) before it is acknowledged.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::spec::{SliverNet, SliverSpec};
use super::state::{SliverRecord, SliverState, StateDir};
use crate::error::SliverError;

/// A partial update of a sliver's network limits (`PATCH /slivers/{name}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliverPatch {
    /// New weight.
    #[serde(default)]
    pub net_share: Option<u32>,
    /// New guaranteed rate, bit/s.
    #[serde(default)]
    pub net_min_rate: Option<u64>,
    /// New cap, bit/s.
    #[serde(default)]
    pub net_max_rate: Option<u64>,
    /// New daily budget, KB.
    #[serde(default)]
    pub net_max_kbyte: Option<u64>,
    /// New daily threshold, KB.
    #[serde(default)]
    pub net_thresh_kbyte: Option<u64>,
    /// New published ports (all of them; `[]` removes every one).
    #[serde(default)]
    pub ports: Option<Vec<crate::published_ports::PortForward>>,
    /// New CPU weight.
    #[serde(default)]
    pub cpu_share: Option<u32>,
    /// New CPU cap, percent of one CPU.
    #[serde(default)]
    pub cpu_max_pct: Option<u32>,
    /// New CPU guarantee, percent of one CPU (raising it must fit the node: else 409).
    #[serde(default)]
    pub cpu_pct: Option<u32>,
    /// New CPUs to run on (a cpuset list).
    #[serde(default)]
    pub cpu_cores: Option<String>,
}

impl SliverPatch {
    /// Whether it changes a network field.
    fn touches_net(&self) -> bool {
        self.net_share.is_some()
            || self.net_min_rate.is_some()
            || self.net_max_rate.is_some()
            || self.net_max_kbyte.is_some()
            || self.net_thresh_kbyte.is_some()
            || self.ports.is_some()
    }

    /// Whether it changes a CPU field.
    pub fn touches_cpu(&self) -> bool {
        self.cpu_share.is_some()
            || self.cpu_max_pct.is_some()
            || self.cpu_pct.is_some()
            || self.cpu_cores.is_some()
    }

    fn apply(&self, net: &SliverNet) -> SliverNet {
        let mut n = net.clone();
        if let Some(v) = self.net_share {
            n.net_share = v;
        }
        if let Some(v) = self.net_min_rate {
            n.net_min_rate = v;
        }
        if self.net_max_rate.is_some() {
            n.net_max_rate = self.net_max_rate;
        }
        if self.net_max_kbyte.is_some() {
            n.net_max_kbyte = self.net_max_kbyte;
        }
        if self.net_thresh_kbyte.is_some() {
            n.net_thresh_kbyte = self.net_thresh_kbyte;
        }
        if let Some(ports) = &self.ports {
            n.ports.clone_from(ports);
        }
        n
    }
}

/// Whether a create request made something new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new sliver.
    New,
    /// The same spec was already there (PUT is idempotent).
    Unchanged,
}

/// All slivers of this node: the records in memory, each change written to the state
/// directory before it is acknowledged.
#[derive(Debug)]
pub struct Registry {
    state: StateDir,
    slivers: Mutex<BTreeMap<String, SliverRecord>>,
    /// Records changed in memory whose write failed (a VMM's exit seen while the disk
    /// refused writes): written again by [`Registry::flush_deferred`].
    deferred: Mutex<std::collections::BTreeSet<String>>,
    /// Names whose record files could not be read at start-up: not known to be deleted.
    unreadable: std::collections::BTreeSet<String>,
}

fn not_found(name: &str) -> SliverError {
    SliverError::NotFound(name.to_string())
}

/// The `cpu_pct` of every sliver but `name`, summed (percent of one CPU).
fn guaranteed_besides(slivers: &BTreeMap<String, SliverRecord>, name: &str) -> u64 {
    slivers
        .iter()
        .filter(|(n, _)| n.as_str() != name)
        .filter_map(|(_, r)| r.spec.cpu_pct)
        .map(u64::from)
        .sum()
}

impl Registry {
    /// Load every sliver from `state`; unreadable records are logged and skipped.
    pub fn load(state: StateDir) -> Result<Self, super::state::StateError> {
        let loaded = state.load_all()?;
        for problem in &loaded.problems {
            log::error!("state directory: {problem}");
        }
        Ok(Self {
            state,
            slivers: Mutex::new(loaded.records.into_iter().collect()),
            deferred: Mutex::new(std::collections::BTreeSet::new()),
            unreadable: loaded.unreadable.into_iter().collect(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SliverRecord>> {
        self.slivers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Define sliver `name` with an already validated `spec`; 409 if it exists with another,
    /// or if its `cpu_pct` does not fit beside the other slivers' ([`crate::cpu_guarantee::admit`]).
    pub fn create(
        &self,
        name: &str,
        spec: SliverSpec,
    ) -> Result<(Created, SliverRecord), SliverError> {
        let mut slivers = self.lock();
        if let Some(existing) = slivers.get(name) {
            if existing.spec == spec {
                return Ok((Created::Unchanged, existing.clone()));
            }
            return Err(SliverError::conflict(
                Some("name"),
                format!("sliver {name:?} exists with a different spec"),
            ));
        }
        if let Some(pct) = spec.cpu_pct {
            crate::cpu_guarantee::admit(
                guaranteed_besides(&slivers, name),
                pct,
                crate::cpu_guarantee::node_cpus(),
            )?;
        }
        let record = SliverRecord {
            spec,
            state: SliverState::Created,
            pid: None,
            started_at: None,
            exit_reason: None,
            jail_index: None,
        };
        self.state.create(name, &record)?;
        slivers.insert(name.to_string(), record.clone());
        Ok((Created::New, record))
    }

    /// One sliver.
    pub fn get(&self, name: &str) -> Result<SliverRecord, SliverError> {
        self.lock()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))
    }

    /// Every sliver, by name.
    pub fn list(&self) -> Vec<(String, SliverRecord)> {
        self.lock()
            .iter()
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect()
    }

    /// Apply a patch of network and CPU limits (validated as a whole before anything is
    /// stored); a raised `cpu_pct` must fit beside the other slivers' (else 409, naming it).
    pub fn patch(&self, name: &str, patch: &SliverPatch) -> Result<SliverRecord, SliverError> {
        let mut slivers = self.lock();
        let record = slivers.get(name).ok_or_else(|| not_found(name))?;
        let mut updated = record.clone();
        if patch.touches_net() {
            let net = record.spec.net.as_ref().ok_or_else(|| {
                SliverError::invalid(
                    "net",
                    format!("sliver {name:?} has no network device to limit"),
                )
            })?;
            let patched = patch.apply(net);
            patched.validate_limits()?;
            updated.spec.net = Some(patched);
        }
        if let Some(share) = patch.cpu_share {
            updated.spec.cpu_share = share;
        }
        if patch.cpu_max_pct.is_some() {
            updated.spec.cpu_max_pct = patch.cpu_max_pct;
        }
        if patch.cpu_pct.is_some() {
            updated.spec.cpu_pct = patch.cpu_pct;
        }
        if patch.cpu_cores.is_some() {
            updated.spec.cpu_cores.clone_from(&patch.cpu_cores);
        }
        updated.spec.validate_cpu()?;
        // Only a raise is checked: a node that lost CPUs still takes other changes.
        if let Some(pct) = updated
            .spec
            .cpu_pct
            .filter(|&p| p > record.spec.cpu_pct.unwrap_or(0))
        {
            crate::cpu_guarantee::admit(
                guaranteed_besides(&slivers, name),
                pct,
                crate::cpu_guarantee::node_cpus(),
            )?;
        }
        self.state.save(name, &updated)?;
        slivers.insert(name.to_string(), updated.clone());
        Ok(updated)
    }

    /// Change sliver `name` with `f` (which may refuse by returning an error) and store the
    /// result before acknowledging it; a change that changes nothing writes nothing.
    pub fn update<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut SliverRecord) -> Result<T, SliverError>,
    ) -> Result<(T, SliverRecord), SliverError> {
        let mut slivers = self.lock();
        let current = slivers.get(name).ok_or_else(|| not_found(name))?;
        let mut record = current.clone();
        let out = f(&mut record)?;
        if record != *current {
            self.state.save(name, &record)?;
            slivers.insert(name.to_string(), record.clone());
            self.lock_deferred().remove(name);
        }
        Ok((out, record))
    }

    /// Sliver `name`'s index in the node's jail ids: the one it has, or else the lowest no
    /// other sliver has (stored before it is returned), so that every sliver's VMM runs as
    /// ids of its own for as long as the sliver exists.
    pub fn jail_index(&self, name: &str) -> Result<u32, SliverError> {
        let mut slivers = self.lock();
        let current = slivers.get(name).ok_or_else(|| not_found(name))?;
        if let Some(index) = current.jail_index {
            return Ok(index);
        }
        let taken: std::collections::BTreeSet<u32> =
            slivers.values().filter_map(|r| r.jail_index).collect();
        let index = (0..).find(|i| !taken.contains(i)).unwrap_or(u32::MAX);
        let mut record = current.clone();
        record.jail_index = Some(index);
        self.state.save(name, &record)?;
        slivers.insert(name.to_string(), record);
        Ok(index)
    }

    /// Change sliver `name` with `f` in memory even if the write fails (what happened to a
    /// VMM is a fact, not a request); a failed write is retried by
    /// [`Registry::flush_deferred`]. Returns the record, or `None` if there is none.
    pub fn record_fact(
        &self,
        name: &str,
        f: impl FnOnce(&mut SliverRecord),
    ) -> Option<SliverRecord> {
        let mut slivers = self.lock();
        let record = slivers.get_mut(name)?;
        f(record);
        let record = record.clone();
        if let Err(e) = self.state.save(name, &record) {
            log::error!("sliver {name}: recording in the state directory: {e} (will retry)");
            self.lock_deferred().insert(name.to_string());
        }
        Some(record)
    }

    /// Write again the records whose write failed; returns how many are still not written.
    pub fn flush_deferred(&self) -> usize {
        let names: Vec<String> = self.lock_deferred().iter().cloned().collect();
        for name in names {
            // Under the registry's lock, as every write: nothing newer can be overwritten.
            let slivers = self.lock();
            let written = match slivers.get(&name) {
                Some(r) => self.state.save(&name, r).is_ok(),
                None => true,
            };
            if written {
                log::info!("sliver {name}: its record is written again");
                self.lock_deferred().remove(&name);
            }
        }
        self.lock_deferred().len()
    }

    /// Whether `name`'s record file could not be read at start-up (then nothing of that
    /// name is removed as a stray: it is not known to be deleted).
    pub fn is_unreadable(&self, name: &str) -> bool {
        self.unreadable.contains(name)
    }

    /// The names whose record files could not be read at start-up.
    pub fn unreadable_names(&self) -> impl Iterator<Item = String> + '_ {
        self.unreadable.iter().cloned()
    }

    fn lock_deferred(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether sliver `name` is defined.
    pub fn contains(&self, name: &str) -> bool {
        self.lock().contains_key(name)
    }

    /// Forget sliver `name`; it must not be running (the supervisor stops it first).
    pub fn delete(&self, name: &str) -> Result<(), SliverError> {
        let mut slivers = self.lock();
        let record = slivers.get(name).ok_or_else(|| not_found(name))?;
        if matches!(
            record.state,
            SliverState::Starting | SliverState::Running | SliverState::Stopping
        ) {
            return Err(SliverError::conflict(
                None,
                format!("sliver {name:?} is {}", record.state.as_str()),
            ));
        }
        self.state.remove(name)?;
        slivers.remove(name);
        self.lock_deferred().remove(name);
        Ok(())
    }

    /// Count of slivers per state (for /metrics).
    pub fn count_by_state(&self) -> BTreeMap<SliverState, usize> {
        let mut counts = BTreeMap::new();
        for record in self.lock().values() {
            *counts.entry(record.state).or_insert(0) += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::cpu_guarantee::{capacity_pct, node_cpus};

    fn spec(pct: Option<u32>) -> SliverSpec {
        let mut v = json!({"slice": "s", "kernel": "/k", "vcpus": 32});
        if let Some(pct) = pct {
            v["cpu_pct"] = json!(pct);
        }
        serde_json::from_value(v).expect("spec")
    }

    fn pct_patch(pct: u32) -> SliverPatch {
        SliverPatch {
            cpu_pct: Some(pct),
            ..SliverPatch::default()
        }
    }

    #[test]
    fn guarantees_are_admitted_up_to_the_nodes_capacity() {
        let dir = tempfile::tempdir().expect("tmp");
        let registry = Registry::load(StateDir::open(dir.path()).expect("state")).expect("load");
        let capacity = u32::try_from(capacity_pct(node_cpus())).expect("small");
        registry
            .create("a", spec(Some(capacity - 10)))
            .expect("a fits");
        registry.create("b", spec(Some(10))).expect("b fills it");
        registry.create("plain", spec(None)).expect("no guarantee");
        let e = registry.create("c", spec(Some(1))).expect_err("full");
        assert_eq!(e.field(), Some("cpu_pct"));
        assert!(matches!(e, SliverError::Conflict { .. }), "{e:?}");
        assert!(e.to_string().contains("0 % is left"), "{e}");
        assert!(!registry.contains("c"));

        registry.patch("b", &pct_patch(5)).expect("lowered");
        let e = registry
            .patch("b", &pct_patch(11))
            .expect_err("raised too far");
        assert_eq!(e.field(), Some("cpu_pct"));
        assert!(e.to_string().contains("10 % is left"), "{e}");
        assert_eq!(registry.get("b").expect("b").spec.cpu_pct, Some(5));
        registry.patch("b", &pct_patch(10)).expect("raised to fit");
        let share = SliverPatch {
            cpu_share: Some(4),
            ..SliverPatch::default()
        };
        registry.patch("a", &share).expect("other fields");

        registry.delete("b").expect("delete");
        registry.create("c", spec(Some(10))).expect("room again");
    }
}
