//! The node's operations on its slivers, each whole with its rollback: define (record the
//! spec, make the TAP and the shaper slot; undo all of it if a step fails), change limits,
//! start, stop, delete (stop, forget the record, remove the TAP and slot), and what the API
//! shows of a sliver. The API layer parses requests and maps [`SliverError`]s to statuses;
//! everything the node does happens here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use audit_store::params::QueryParams;
use audit_store::query::QueryAnswer;
use serde::Serialize;
use vmm::ledger::Ledger;
use vmm::stats::SliverCounters;

use crate::error::SliverError;
use crate::host_net;
use crate::registry::{Created, LimitsPatch, Registry};
use crate::shares::slots::{self, Shaping};
use crate::spec::{SliverNet, SliverSpec};
use crate::state::{SliverRecord, SliverState};
use crate::supervisor::Supervisor;

/// A sliver as the API shows it: its record, its VMM's packet counters and its shaping.
#[derive(Debug, Clone, Serialize)]
pub struct SliverView {
    /// The sliver's name.
    pub name: String,
    /// Its slice.
    pub slice: String,
    /// Where it is in its life.
    pub state: SliverState,
    /// Its VMM's pid while one runs.
    pub pid: Option<u32>,
    /// When its VMM was started, seconds since the Unix epoch.
    pub started_at: Option<u64>,
    /// Why its VMM last ended.
    pub exit_reason: Option<String>,
    /// Packet counters of its current (or last) VMM.
    pub counters: SliverCounters,
    /// Allocated rates, bytes today, time throttled (slivers with a network device).
    pub shaping: Option<Shaping>,
    /// The accepted spec.
    pub spec: SliverSpec,
}

/// The node daemon's slivers and everything the node does for them.
#[derive(Debug)]
pub struct Node {
    registry: Arc<Registry>,
    supervisor: Arc<Supervisor>,
    netlink: rtnetlink::Handle,
    ledger: Arc<Ledger>,
    state_dir: PathBuf,
}

/// Run registry work (which fsyncs) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SliverError> + Send + 'static,
) -> Result<T, SliverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SliverError::Internal(format!("blocking task: {e}")))?
}

impl Node {
    /// The node over `registry`, running VMMs with `supervisor`, making TAPs through `netlink`
    /// and shaper slots in `ledger`; audit logs are under `state_dir`.
    pub fn new(
        registry: Arc<Registry>,
        supervisor: Arc<Supervisor>,
        netlink: rtnetlink::Handle,
        ledger: Arc<Ledger>,
        state_dir: &Path,
    ) -> Self {
        Self {
            registry,
            supervisor,
            netlink,
            ledger,
            state_dir: state_dir.to_owned(),
        }
    }

    /// The sliver registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Define sliver `name` with `spec` (validated here). An identical definition is
    /// [`Created::Unchanged`]; a new one gets its TAP and shaper slot, and if either fails,
    /// the definition goes again and nothing is left half-made.
    pub async fn create(
        &self,
        name: &str,
        mut spec: SliverSpec,
    ) -> Result<(Created, SliverView), SliverError> {
        let registry = self.registry.clone();
        let owned = name.to_string();
        let (created, record) = blocking(move || {
            spec.validate(&owned)?;
            registry.create(&owned, spec)
        })
        .await?;
        if created == Created::New {
            if let Err(e) = self.setup_host(name, &record.spec).await {
                let registry = self.registry.clone();
                let owned = name.to_string();
                blocking(move || registry.delete(&owned)).await?;
                self.teardown_host(name).await;
                return Err(e);
            }
        }
        Ok((created, self.view(name, record)))
    }

    /// Change sliver `name`'s network limits with `patch` (validated as a whole first); the
    /// share allocation applies them at its next tick.
    pub async fn patch_limits(
        &self,
        name: &str,
        patch: LimitsPatch,
    ) -> Result<SliverView, SliverError> {
        let registry = self.registry.clone();
        let owned = name.to_string();
        let record = blocking(move || registry.patch_limits(&owned, &patch)).await?;
        if let Some(net) = &record.spec.net {
            self.apply_limits(name, net)?;
        }
        Ok(self.view(name, record))
    }

    /// Start sliver `name`'s VMM.
    pub async fn start(&self, name: &str) -> Result<SliverView, SliverError> {
        let record = self.supervisor.start(name).await?;
        Ok(self.view(name, record))
    }

    /// Stop sliver `name`'s VMM (asking its guest first; see [`Supervisor::stop`]).
    pub async fn stop(&self, name: &str) -> Result<SliverView, SliverError> {
        let record = self.supervisor.stop(name).await?;
        Ok(self.view(name, record))
    }

    /// Delete sliver `name`: stop its VMM, forget its record, remove its TAP and slot.
    pub async fn delete(&self, name: &str) -> Result<(), SliverError> {
        let had_net = self.registry.get(name)?.spec.net.is_some();
        self.supervisor.stop(name).await?;
        let registry = self.registry.clone();
        let owned = name.to_string();
        blocking(move || registry.delete(&owned)).await?;
        if had_net {
            self.teardown_host(name).await;
        }
        Ok(())
    }

    /// Sliver `name` as the API shows it.
    pub fn show(&self, name: &str) -> Result<SliverView, SliverError> {
        let record = self.registry.get(name)?;
        Ok(self.view(name, record))
    }

    /// Every sliver, by name.
    pub fn list(&self) -> Vec<SliverView> {
        self.registry
            .list()
            .into_iter()
            .map(|(name, record)| self.view(&name, record))
            .collect()
    }

    /// Which slices and slivers had the flows `params` asks for (`GET /audit`).
    pub async fn audit(&self, params: QueryParams) -> Result<QueryAnswer, SliverError> {
        let state_dir = self.state_dir.clone();
        blocking(move || Ok(audit_store::query::run(&state_dir, &params)?)).await
    }

    fn view(&self, name: &str, r: SliverRecord) -> SliverView {
        SliverView {
            name: name.to_string(),
            slice: r.spec.slice.clone(),
            state: r.state,
            pid: r.pid,
            started_at: r.started_at,
            exit_reason: r.exit_reason,
            counters: self.supervisor.counters(name),
            shaping: self.shaping(name),
            spec: r.spec,
        }
    }

    /// Sliver `name`'s shaping state (allocated rates, bytes today, time throttled).
    fn shaping(&self, name: &str) -> Option<Shaping> {
        slots::find(&self.ledger, name).and_then(|i| slots::snapshot(&self.ledger, i))
    }

    /// Make the TAP of sliver `name` and give it a shaper slot, if its spec has a network
    /// device.
    async fn setup_host(&self, name: &str, spec: &SliverSpec) -> Result<(), SliverError> {
        let Some(net) = &spec.net else {
            return Ok(());
        };
        let (Some((_, prefix)), Some(host)) = (net.guest_cidr(), net.host_addr()) else {
            return Err(SliverError::invalid("net", "addresses not validated"));
        };
        let tap = host_net::tap_name(name);
        host_net::ensure_tap(&self.netlink, &tap, host, prefix).await?;
        log::info!("sliver {name}: TAP {tap} with {host}/{prefix}");
        self.apply_limits(name, net)
    }

    /// Give sliver `name` a shaper slot (or update its own) with the limits in `net`.
    fn apply_limits(&self, name: &str, net: &SliverNet) -> Result<(), SliverError> {
        slots::assign(&self.ledger, name, &net.limits())
            .map(|_| ())
            .map_err(|e| SliverError::Exhausted(format!("no shaper slot for {name:?}: {e}")))
    }

    /// Give back sliver `name`'s slot and remove its TAP (if any).
    async fn teardown_host(&self, name: &str) {
        slots::release(&self.ledger, name);
        let tap = host_net::tap_name(name);
        if let Err(e) = host_net::remove_tap(&self.netlink, &tap).await {
            log::error!("sliver {name}: {e}");
        }
    }
}
