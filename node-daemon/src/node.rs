//! The node's operations on its slivers, and the convergence of the host to the recorded
//! state (`reconcile.rs`).
//!
//! Each operation holds the sliver name's lock ([`NameLocks`]) from its first check to its
//! reply, records its intent, then makes the host match; a failure rolls back what it did
//! before it replies, and a crash at any point is converged on restart. So a 2xx means the
//! effect exists and is recorded:
//! - define: the shaper slot is reserved (nothing is written when none is free), the record
//!   is written (the only write that needs new disk space), then the TAP is made; an
//!   identical definition converges the host and answers unchanged;
//! - change limits: the record, then the slot (rolled back together);
//! - start: the host side is converged, the record says starting, the VMM is spawned, the
//!   record says running with its pid;
//! - stop: the record says stopping, the guest is asked, then SIGTERM, then SIGKILL;
//! - delete: stop, then the record goes (the commit point), then the TAP, the slot and the
//!   capture ring.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit_store::params::QueryParams;
use audit_store::query::QueryAnswer;
use serde::Serialize;
use vmm::ledger::Ledger;
use vmm::stats::SliverCounters;

use crate::error::SliverError;
use crate::host_net;
use crate::images::ImageStore;
use crate::name_locks::NameLocks;
use crate::registry::{Created, Registry, SliverPatch};
use crate::shares::slots::{self, Shaping};
use crate::sliver_disks::SliverDisks;
use crate::spec::{SliverNet, SliverSpec};
use crate::state::{SliverRecord, SliverState};
use crate::supervisor::Supervisor;
use crate::uplink::NodeNet;

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
    /// Its root disk (slivers with a `vref`).
    pub disk: Option<DiskView>,
    /// How to log in (slivers with a `vref`, keys and a network device).
    pub ssh: Option<SshView>,
    /// Its cgroup's accounting (when the node makes cgroups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<crate::sliver_cgroups::CgroupStats>,
    /// Its ports published on the node's uplink address.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub published: Vec<crate::net_plan::PublishedPort>,
    /// The accepted spec.
    pub spec: SliverSpec,
}

/// A sliver's root disk as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DiskView {
    /// The image it is a copy of.
    pub vref: String,
    /// Its quota and size, kB.
    pub disk_max: u64,
    /// Host bytes it takes now (0 before it is made).
    pub used_bytes: u64,
}

/// How to reach a sliver's ssh server (from the node: see `slicevisor ctl ssh`).
#[derive(Debug, Clone, Serialize)]
pub struct SshView {
    /// `root`.
    pub user: String,
    /// The guest's address.
    pub host: String,
    /// 22.
    pub port: u16,
    /// The command, e.g. `ssh root@10.0.3.2`.
    pub command: String,
    /// From outside the node, when a published TCP port leads to the sliver's port 22:
    /// e.g. `ssh -p 2222 root@198.51.100.1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outside: Option<String>,
}

/// What the node keeps of deleted slivers' audit data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditRetention {
    /// How long a deleted sliver's capture ring is kept (zero: removed at delete).
    pub capture_after_delete: Duration,
    /// Flow records of slivers not running are expired by this policy (running VMMs apply it
    /// themselves).
    pub flows: audit_store::retention::Retention,
}

impl Default for AuditRetention {
    fn default() -> Self {
        Self {
            capture_after_delete: Duration::ZERO,
            flows: audit_store::retention::Retention::default(),
        }
    }
}

/// The node daemon's slivers and everything the node does for them.
#[derive(Debug)]
pub struct Node {
    pub(crate) registry: Arc<Registry>,
    pub(crate) supervisor: Arc<Supervisor>,
    pub(crate) netlink: rtnetlink::Handle,
    pub(crate) ledger: Arc<Ledger>,
    pub(crate) state_dir: PathBuf,
    pub(crate) locks: NameLocks,
    /// Finding a free shaper slot and claiming it is one step for every name at once.
    slots_lock: Mutex<()>,
    /// Making or removing a TAP, and the sweep for stray TAPs (which lists the host's TAPs
    /// and the records, then removes), take turns: the sweep never sees a TAP without the
    /// record it was made for.
    pub(crate) taps: tokio::sync::Mutex<()>,
    pub(crate) retention: AuditRetention,
    /// Reference images.
    pub(crate) images: ImageStore,
    /// Slivers' disks.
    pub(crate) disks: SliverDisks,
    /// The network flags, and the uplink found at start-up.
    pub(crate) net: NodeNet,
    /// Choosing a sliver's addresses and ports and recording them is one step for every
    /// name at once.
    pub(crate) addressing: tokio::sync::Mutex<()>,
    /// The nftables batch last applied (re-applied only when it changes, or by the periodic
    /// reconcile).
    pub(crate) rules_applied: tokio::sync::Mutex<Option<serde_json::Value>>,
    /// Which sliver has which address, for the NAT log (`nat_watch`).
    pub(crate) sliver_addrs: crate::nat_watch::SliverAddrs,
}

/// How to reach `spec`'s sliver by ssh, if it has an image, keys and an address.
fn ssh_view(spec: &SliverSpec) -> Option<SshView> {
    spec.vref.as_ref()?;
    spec.keys.as_ref().filter(|k| !k.is_empty())?;
    let (ip, _) = spec.net.as_ref()?.guest_cidr()?;
    Some(SshView {
        user: "root".into(),
        host: ip.to_string(),
        port: 22,
        command: format!("ssh root@{ip}"),
        outside: None,
    })
}

/// Run registry work (which fsyncs) off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SliverError> + Send + 'static,
) -> Result<T, SliverError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SliverError::Internal(format!("blocking task: {e}")))?
}

impl Node {
    /// The node over `registry`, running VMMs with `supervisor`, making TAPs through `netlink`
    /// and shaper slots in `ledger`; audit logs, images and disks are under `state_dir`;
    /// slivers reach the outside through `uplink` (found at start-up) as `net` says.
    ///
    /// # Errors
    /// The image or disk directory cannot be made.
    pub fn new(
        registry: Arc<Registry>,
        supervisor: Arc<Supervisor>,
        netlink: rtnetlink::Handle,
        ledger: Arc<Ledger>,
        state_dir: &Path,
        retention: AuditRetention,
        net: NodeNet,
    ) -> Result<Self, crate::state::StateError> {
        Ok(Self {
            registry,
            supervisor,
            netlink,
            ledger,
            state_dir: state_dir.to_owned(),
            locks: NameLocks::default(),
            slots_lock: Mutex::new(()),
            taps: tokio::sync::Mutex::new(()),
            retention,
            images: ImageStore::open(state_dir)?,
            disks: SliverDisks::open(state_dir)?,
            net,
            addressing: tokio::sync::Mutex::new(()),
            rules_applied: tokio::sync::Mutex::new(None),
            sliver_addrs: crate::nat_watch::SliverAddrs::default(),
        })
    }

    /// Sliver `name`'s console log files, oldest first.
    pub fn console_logs(&self, name: &str) -> [PathBuf; 2] {
        self.supervisor.console_logs(name)
    }

    /// Sliver `name`'s VMM's console socket.
    pub fn console_socket(&self, name: &str) -> PathBuf {
        self.supervisor.console_socket(name)
    }

    /// Which sliver has which address (for the NAT log).
    pub fn sliver_addrs(&self) -> crate::nat_watch::SliverAddrs {
        self.sliver_addrs.clone()
    }

    /// The image store.
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// The slivers whose spec names image `vref`.
    pub fn image_users(&self, vref: &str) -> Vec<String> {
        self.registry
            .list()
            .into_iter()
            .filter(|(_, r)| r.spec.vref.as_deref() == Some(vref))
            .map(|(n, _)| n)
            .collect()
    }

    /// Check that `spec`'s `vref` exists and fits in its `disk_max`.
    fn check_vref(&self, spec: &SliverSpec) -> Result<(), SliverError> {
        let Some(vref) = &spec.vref else {
            return Ok(());
        };
        let image = self.images.get(vref).map_err(|_| {
            SliverError::invalid("vref", format!("no image named {vref:?} (see GET /images)"))
        })?;
        if spec.disk_max_bytes() < image.size {
            return Err(SliverError::invalid(
                "disk_max",
                format!(
                    "{} kB is smaller than image {vref:?} ({} kB)",
                    spec.disk_max_bytes() / 1024,
                    image.size.div_ceil(1024)
                ),
            ));
        }
        Ok(())
    }

    /// Make sliver `name`'s root disk if it has none (slivers with a `vref`).
    async fn ensure_disk(&self, name: &str, spec: &SliverSpec) -> Result<(), SliverError> {
        let Some(vref) = spec.vref.clone() else {
            return Ok(());
        };
        let image = self.images.image_path(&vref);
        let disks = SliverDisks::at(&self.state_dir);
        let (owned, size) = (name.to_string(), spec.disk_max_bytes());
        blocking(move || disks.ensure_root(&owned, &image, size).map(|_| ())).await
    }

    /// Write sliver `name`'s config disk for this start (slivers with a `vref`).
    async fn write_cidata(&self, name: &str, spec: &SliverSpec) -> Result<(), SliverError> {
        if spec.vref.is_none() {
            return Ok(());
        }
        let config = crate::sliver_config::config(name, spec);
        let disks = SliverDisks::at(&self.state_dir);
        let owned = name.to_string();
        blocking(move || disks.write_cidata(&owned, &config)).await
    }

    /// The sliver registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Define sliver `name` with `spec` (validated here). An identical definition converges
    /// the host and is [`Created::Unchanged`]; a new one gets its shaper slot, its record and
    /// its TAP, and if any step fails, what was done is undone before the error returns.
    pub async fn create(
        self: &Arc<Self>,
        name: &str,
        spec: SliverSpec,
    ) -> Result<(Created, SliverView), SliverError> {
        let owned = name.to_string();
        let mut spec = blocking(move || {
            let mut spec = spec;
            spec.validate(&owned).map(|()| spec)
        })
        .await?;
        self.check_vref(&spec)?;
        let _lock = self.locks.lock(name).await;
        let _addressing = self.addressing.lock().await;
        self.plan_network(name, &mut spec)?;
        if self.registry.is_unreadable(name) {
            return Err(SliverError::conflict(
                Some("name"),
                format!(
                    "the record file of sliver {name:?} could not be read at start-up: repair or \
                     remove it first (see the daemon's log)"
                ),
            ));
        }
        if let Ok(existing) = self.registry.get(name) {
            if existing.spec != spec {
                return Err(SliverError::conflict(
                    Some("name"),
                    format!("sliver {name:?} exists with a different spec"),
                ));
            }
            self.converge_locked(name).await?;
            return Ok((Created::Unchanged, self.show(name)?));
        }
        if let Some(net) = &spec.net {
            self.claim_slot(name, net)?;
        }
        let registry = self.registry.clone();
        let owned = name.to_string();
        let created = blocking(move || registry.create(&owned, spec)).await;
        let record = match created {
            Ok((_, record)) => record,
            Err(e) => {
                self.release_slot(name);
                return Err(e);
            }
        };
        let host_side = match &record.spec.net {
            Some(net) => self.ensure_tap(name, net).await,
            None => Ok(()),
        };
        let host_side = match host_side {
            Ok(()) => self.ensure_disk(name, &record.spec).await,
            Err(e) => Err(e),
        };
        // Its rules with its addresses: if they cannot be applied, neither is kept.
        let host_side = match host_side {
            Ok(()) => self.sync_rules(false).await,
            Err(e) => Err(e),
        };
        if let Err(e) = host_side {
            self.remove_tap(name).await;
            self.release_slot(name);
            self.disks.remove(name);
            let registry = self.registry.clone();
            let owned = name.to_string();
            if let Err(undo) = blocking(move || registry.delete(&owned)).await {
                log::error!("sliver {name}: undoing its definition: {undo}");
            }
            if let Err(undo) = self.sync_rules(false).await {
                log::error!("sliver {name}: undoing its rules: {undo}");
            }
            return Err(e);
        }
        self.converge_after(name).await;
        Ok((Created::New, self.show(name)?))
    }

    /// Change sliver `name`'s network and CPU limits with `patch` (validated as a whole
    /// first); the share allocation applies the network ones at its next tick, the CPU ones
    /// are written to its cgroup at once.
    pub async fn patch(
        self: &Arc<Self>,
        name: &str,
        patch: SliverPatch,
    ) -> Result<SliverView, SliverError> {
        let _lock = self.locks.lock(name).await;
        let _addressing = self.addressing.lock().await;
        let before = self.registry.get(name)?;
        if let Some(ports) = &patch.ports {
            crate::published_ports::validate(ports)?;
            self.check_ports(ports, &self.other_nets(name))?;
        }
        let cpu_changed = patch.touches_cpu();
        let registry = self.registry.clone();
        let owned = name.to_string();
        let record = blocking(move || registry.patch(&owned, &patch)).await?;
        let mut applied = match &record.spec.net {
            Some(net) => match self.claim_slot(name, net) {
                Ok(()) => self.sync_rules(false).await,
                Err(e) => Err(e),
            },
            None => Ok(()),
        };
        // CPU limits take effect at once for a running VMM (its cgroup's files).
        if let (Ok(()), Some(cgroups), true) = (&applied, self.supervisor.cgroups(), cpu_changed) {
            if cgroups.exists(name) {
                applied = cgroups
                    .apply(name, &record.spec.cgroup_limits())
                    .map_err(|e| SliverError::Internal(e.to_string()));
            }
        }
        if let Err(e) = applied {
            // Limits, ports and rules go back together.
            let registry = self.registry.clone();
            let owned = name.to_string();
            blocking(move || {
                registry.update(&owned, |r| {
                    r.spec = before.spec;
                    Ok(())
                })
            })
            .await?;
            let restored = self.registry.get(name)?.spec;
            if let Some(net) = &restored.net {
                let _ = self.claim_slot(name, net);
            }
            if let (Some(cgroups), true) = (self.supervisor.cgroups(), cpu_changed) {
                if cgroups.exists(name) {
                    let _ = cgroups.apply(name, &restored.cgroup_limits());
                }
            }
            if let Err(undo) = self.sync_rules(false).await {
                log::error!("sliver {name}: undoing its rules: {undo}");
            }
            return Err(e);
        }
        self.converge_after(name).await;
        Ok(self.view(name, record))
    }

    /// Start sliver `name`'s VMM, its host side converged first (its disk made if missing,
    /// its config disk written anew).
    pub async fn start(self: &Arc<Self>, name: &str) -> Result<SliverView, SliverError> {
        let _lock = self.locks.lock(name).await;
        let current = self.registry.get(name)?;
        self.converge_locked(name).await?;
        if !matches!(current.state, SliverState::Running | SliverState::Starting) {
            self.ensure_disk(name, &current.spec).await?;
            self.write_cidata(name, &current.spec).await?;
        }
        let record = self.supervisor.start(name).await?;
        Ok(self.view(name, record))
    }

    /// Stop sliver `name`'s VMM (asking its guest first; see [`Supervisor::stop`]).
    pub async fn stop(self: &Arc<Self>, name: &str) -> Result<SliverView, SliverError> {
        let _lock = self.locks.lock(name).await;
        self.registry.get(name)?;
        self.converge_after(name).await;
        let record = self.supervisor.stop(name).await?;
        Ok(self.view(name, record))
    }

    /// Delete sliver `name`: stop its VMM, forget its record (the commit point), then remove
    /// its TAP, slot, capture ring and run files. Needs no new disk space.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<(), SliverError> {
        let _lock = self.locks.lock(name).await;
        self.registry.get(name)?;
        self.converge_after(name).await;
        self.supervisor.stop(name).await?;
        let registry = self.registry.clone();
        let owned = name.to_string();
        blocking(move || registry.delete(&owned)).await?;
        self.supervisor.forget(name);
        self.converge_after(name).await;
        Ok(())
    }

    /// Converge sliver `name` at the end of an operation that did its own steps: what is
    /// left undone is logged, and the periodic convergence retries it.
    async fn converge_after(self: &Arc<Self>, name: &str) {
        if let Err(e) = self.converge_locked(name).await {
            log::error!("sliver {name}: converging: {e}");
        }
        if let Err(e) = self.sync_rules(false).await {
            log::error!("sliver {name}: {e}");
        }
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
        let published = r
            .spec
            .net
            .as_ref()
            .map(|net| self.published(net))
            .unwrap_or_default();
        SliverView {
            name: name.to_string(),
            slice: r.spec.slice.clone(),
            state: r.state,
            pid: r.pid,
            started_at: r.started_at,
            exit_reason: r.exit_reason,
            counters: self.supervisor.counters(name),
            shaping: self.shaping(name),
            disk: r.spec.vref.as_ref().map(|vref| DiskView {
                vref: vref.clone(),
                disk_max: r.spec.disk_max_bytes() / 1024,
                used_bytes: self.disks.used_bytes(name).unwrap_or(0),
            }),
            ssh: ssh_view(&r.spec).map(|ssh| SshView {
                outside: published
                    .iter()
                    .find(|p| {
                        p.proto == crate::published_ports::Proto::Tcp && p.sliver.ends_with(":22")
                    })
                    .and_then(|p| p.node.rsplit_once(':'))
                    .map(|(addr, port)| format!("ssh -p {port} root@{addr}")),
                ..ssh
            }),
            published,
            cgroup: self.supervisor.cgroups().map(|c| c.stats(name)),
            spec: r.spec,
        }
    }

    /// Sliver `name`'s shaping state (allocated rates, bytes today, time throttled).
    fn shaping(&self, name: &str) -> Option<Shaping> {
        slots::find(&self.ledger, name).and_then(|i| slots::snapshot(&self.ledger, i))
    }

    /// Make sliver `name`'s TAP with exactly its host address, up.
    pub(crate) async fn ensure_tap(&self, name: &str, net: &SliverNet) -> Result<(), SliverError> {
        let (Some((_, prefix)), Some(host)) = (net.guest_cidr(), net.host_addr()) else {
            return Err(SliverError::invalid("net", "addresses not validated"));
        };
        let tap = host_net::tap_name(name);
        let _taps = self.taps.lock().await;
        host_net::ensure_tap(&self.netlink, &tap, host, prefix).await?;
        if self.net.uplink.is_some() {
            crate::uplink::enable_forwarding(&tap)
                .map_err(|e| SliverError::Internal(e.to_string()))?;
        }
        log::debug!("sliver {name}: TAP {tap} with {host}/{prefix}");
        Ok(())
    }

    /// Give sliver `name` a shaper slot (or update its own) with the limits in `net`.
    pub(crate) fn claim_slot(&self, name: &str, net: &SliverNet) -> Result<(), SliverError> {
        let _slots = self.slots_lock.lock().unwrap_or_else(|p| p.into_inner());
        slots::assign(&self.ledger, name, &net.limits())
            .map(|_| ())
            .map_err(|e| SliverError::Exhausted(format!("no shaper slot for {name:?}: {e}")))
    }

    /// Give back sliver `name`'s shaper slot (if it has one).
    pub(crate) fn release_slot(&self, name: &str) {
        let _slots = self.slots_lock.lock().unwrap_or_else(|p| p.into_inner());
        slots::release(&self.ledger, name);
    }

    /// Remove sliver `name`'s TAP (if any); a failure is logged, the next convergence retries.
    pub(crate) async fn remove_tap(&self, name: &str) {
        let _taps = self.taps.lock().await;
        if let Err(e) = host_net::remove_tap(&self.netlink, &host_net::tap_name(name)).await {
            log::error!("sliver {name}: {e}");
        }
    }

    /// Everything the host keeps for a sliver that no longer exists: its TAP, its shaper
    /// slot, its run files, and (unless kept for a while) its capture ring.
    pub(crate) async fn remove_host_side(&self, name: &str) {
        self.release_slot(name);
        self.remove_tap(name).await;
        self.disks.remove(name);
        if let Some(cgroups) = self.supervisor.cgroups() {
            cgroups.remove(name);
        }
        let ring =
            audit_store::sliver_dir(&self.state_dir, name).join(audit_store::capture::RING_FILE);
        if self.retention.capture_after_delete.is_zero() {
            self.remove_capture_ring(name);
        } else if let Ok(file) = std::fs::File::options().write(true).open(&ring) {
            // Its retention counts from now, the delete.
            let _ = file.set_modified(std::time::SystemTime::now());
        }
        let run_dir = self.supervisor.sliver_run_dir(name);
        match std::fs::remove_dir_all(&run_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::error!("sliver {name}: removing {}: {e}", run_dir.display()),
        }
    }

    /// Remove sliver `name`'s capture ring (absent is fine).
    pub(crate) fn remove_capture_ring(&self, name: &str) {
        let ring =
            audit_store::sliver_dir(&self.state_dir, name).join(audit_store::capture::RING_FILE);
        match std::fs::remove_file(&ring) {
            Ok(()) => log::info!("sliver {name}: capture ring {} removed", ring.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::error!("sliver {name}: removing {}: {e}", ring.display()),
        }
    }
}
