//! `slicevisor node`: the daemon's unix socket, its permissions, and serving until a signal.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm::ledger::{Ledger, LedgerError};

use super::api;
use super::http_serve::{self, LimitsError, ServeLimits};
use super::node::{AuditRetention, Node};
use super::registry::Registry;
use super::state::{StateDir, StateError};
use super::supervisor::Supervisor;
use crate::shares::coordinator::{self, NodeRates};
use crate::spec::MAX_BODY_BYTES;
use crate::uplink::{self, NetConfig, UplinkError};

/// How to run the daemon.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Control socket path.
    pub socket: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Group allowed to use the socket (mode 0660); otherwise mode 0600, owner only.
    pub socket_group: Option<u32>,
    /// How long a guest gets to power off when asked, before its VMM gets SIGTERM.
    pub guest_stop_timeout: std::time::Duration,
    /// What all guests together may send and receive, bit/s.
    pub node_rates: NodeRates,
    /// Whether VMMs keep a ring of packet headers (flow records are always kept).
    pub capture: bool,
    /// What is kept of deleted slivers' audit data, and for how long.
    pub audit_retention: AuditRetention,
    /// How long a client has to send a request head (after connecting or after the last
    /// response), and then its body.
    pub read_timeout: std::time::Duration,
    /// Connections served at once for anyone (`None`: what the open-file limit allows, at
    /// most 1024); the node manager has a few more.
    pub max_connections: Option<usize>,
    /// The uplink, the slivers' network, denied networks and resolvers.
    pub net: NetConfig,
    /// The ids jailed VMMs run as (`None`: `--no-jail`).
    pub jail: Option<crate::vmm_jail::JailIds>,
}

/// Errors starting the daemon; each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// State directory.
    #[error("--state-dir: {0}")]
    State(#[from] StateError),
    /// Socket problems.
    #[error("--socket {path}: {what}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Which step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The shaper ledger in the state directory.
    #[error("--state-dir: {0}")]
    Shaper(#[from] LedgerError),
    /// Another daemon answers on the socket.
    #[error("--socket {0}: another daemon is serving this socket")]
    InUse(PathBuf),
    /// The async runtime (or finding our own executable) failed.
    #[error("starting the daemon: {0}")]
    Runtime(std::io::Error),
    /// The VMM binary is not beside the daemon's own.
    #[error("{0}: the VMM binary is missing (it is built and installed beside slicevisor)")]
    NoVmm(PathBuf),
    /// The connection limits do not fit the open-file limit.
    #[error(transparent)]
    Limits(#[from] LimitsError),
    /// The network flags.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// The jail ids.
    #[error(transparent)]
    JailIds(#[from] crate::vmm_jail::JailIdsError),
}

fn socket_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |source| NodeError::Socket {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Ask KVM for its supported CPUID table once, for every VMM this daemon starts, and keep it
/// in `state_dir` (see `vmm::arch::cpuid_table`); `None`, logged, when KVM cannot be asked
/// or the file written: each VMM then asks KVM itself, and says so if it cannot.
fn supported_cpuid(state_dir: &Path) -> Option<PathBuf> {
    let path = state_dir.join(vmm::arch::cpuid_table::FILE_NAME);
    match vmm::arch::cpuid_table::save(&path) {
        Ok(()) => {
            log::info!(
                "KVM's supported CPUID table saved to {} for the VMMs",
                path.display()
            );
            Some(path)
        }
        Err(e) => {
            log::warn!("saving KVM's supported CPUID table: {e}; each VMM asks KVM itself");
            None
        }
    }
}

/// Remove a socket file left by a daemon that died; refuse if one still answers.
fn clear_stale_socket(path: &Path) -> Result<(), NodeError> {
    if !path.exists() {
        return Ok(());
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(NodeError::InUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(socket_err(path, "removing a stale socket"))
}

fn set_permissions(path: &Path, group: Option<u32>) -> Result<(), NodeError> {
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(socket_err(path, "chown"))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(socket_err(path, "chmod"))
}

/// The binary the supervisor starts for each sliver: `slicevisor-vmm`, beside this one. It is
/// `slicevisor run` without the daemon's code, so each sliver maps less (docs/benchmarks.md).
fn vmm_binary() -> Result<PathBuf, NodeError> {
    let exe = std::env::current_exe().map_err(NodeError::Runtime)?;
    let vmm = exe.with_file_name("slicevisor-vmm");
    if vmm.is_file() {
        Ok(vmm)
    } else {
        Err(NodeError::NoVmm(vmm))
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot watch SIGTERM/SIGINT; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: shutting down"),
        _ = int.recv() => log::info!("SIGINT: shutting down"),
    }
}

/// Serve the API until SIGTERM/SIGINT.
pub fn run(config: &NodeConfig) -> Result<(), NodeError> {
    let vmm_exe = vmm_binary()?;
    let nofile = http_serve::raise_nofile_limit().map_err(NodeError::Runtime)?;
    let limits = ServeLimits {
        read_timeout: config.read_timeout,
        max_connections: http_serve::max_connections(config.max_connections, nofile)?,
    };
    let state = StateDir::open(&config.state_dir)?;
    // One absolute path for the state directory: VMMs are recognised by the exit-file path in
    // their arguments, which must not depend on the daemon's working directory.
    let state_dir = config
        .state_dir
        .canonicalize()
        .map_err(|source| StateError::Io {
            path: config.state_dir.clone(),
            source,
        })?;
    let registry = Arc::new(Registry::load(state)?);
    log::info!(
        "state directory {}: {} sliver(s)",
        state_dir.display(),
        registry.list().len()
    );
    let ledger_path = state_dir.join("shaper.ledger");
    let ledger = Arc::new(Ledger::create_or_open(&ledger_path).map_err(NodeError::Shaper)?);
    let stop_shares = Arc::new(AtomicBool::new(false));
    let mut shares_thread = None;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(NodeError::Runtime)?;
    let socket = config.socket.clone();
    let result = runtime.block_on(async {
        let (connection, netlink, _) = rtnetlink::new_connection().map_err(NodeError::Runtime)?;
        tokio::spawn(connection);
        let found = match &config.net.uplink {
            Some(name) => Some(uplink::resolve(&netlink, name).await?),
            None => None,
        };
        config.net.check(found.as_ref())?;
        if let Some(up) = &found {
            uplink::enable_forwarding(&up.name)?;
            log::info!(
                "uplink {} ({:?}); slivers' network {}; denied {:?}",
                up.name,
                up.addrs,
                config
                    .net
                    .sliver_net
                    .map_or("none".into(), |n| n.to_string()),
                config.net.deny_dst
            );
        }
        let guest_net = found.as_ref().map(|up| crate::supervisor::GuestNet {
            deny_dst: config.net.vmm_deny(up),
            resolvers: config.net.resolvers.clone(),
        });
        if let Some(ids) = &config.jail {
            ids.check_host()?;
            log::info!("jail: each sliver's VMM runs as its own id from {ids}");
        } else {
            log::warn!("--no-jail: VMMs run as root with every capability (GET /healthz says so)");
        }
        // The default socket's directory (/run/slicevisor) is made at boot by nobody else. A
        // daemon refused the socket (another serves it) stops here, before it makes cgroups.
        if let Some(parent) = socket.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(socket_err(&socket, "creating its directory"))?;
        }
        clear_stale_socket(&socket)?;
        let cgroups = crate::sliver_cgroups::Layout::detect(std::path::Path::new("/sys/fs/cgroup"))
            .map(|layout| {
                crate::sliver_cgroups::Cgroups::new(
                    layout,
                    crate::sliver_cgroups::daemon_level(&state_dir),
                )
            })
            .and_then(|c| c.check().map(|()| c));
        let cgroups = match cgroups {
            Ok(c) => {
                log::info!("cgroups: a cgroup per sliver under {c:?}");
                Some(c)
            }
            Err(e) => {
                log::error!(
                    "{e}: slivers run without CPU and memory limits (GET /healthz says so)"
                );
                None
            }
        };
        let supervisor = Arc::new(
            Supervisor::new(
                registry.clone(),
                vmm_exe,
                &state_dir,
                config.guest_stop_timeout,
                ledger.clone(),
                config.capture,
                crate::supervisor::VmmPolicy {
                    guest_net,
                    cgroups,
                    jail: config.jail,
                    supported_cpuid: supported_cpuid(&state_dir),
                },
            )
            .map_err(|e| {
                NodeError::State(StateError::Io {
                    path: state_dir.join("run"),
                    source: e,
                })
            })?,
        );
        let listener =
            tokio::net::UnixListener::bind(&socket).map_err(socket_err(&socket, "bind"))?;
        set_permissions(&socket, config.socket_group)?;
        // Only the daemon that owns the socket touches the ledger's allocation.
        shares_thread = Some(
            coordinator::spawn(ledger.clone(), config.node_rates, stop_shares.clone())
                .map_err(NodeError::Runtime)?,
        );
        log::info!(
            "shaping: node rate {} bit/s out, {} bit/s in; ledger {}",
            rate_str(config.node_rates.tx),
            rate_str(config.node_rates.rx),
            ledger_path.display()
        );
        let node = Arc::new(Node::new(
            registry.clone(),
            supervisor,
            netlink,
            ledger.clone(),
            &state_dir,
            config.audit_retention,
            uplink::NodeNet {
                config: config.net.clone(),
                uplink: found,
            },
        )?);
        // The host is made to match the records before the first request is served.
        node.reconcile_all().await;
        if config.net.uplink.is_some() {
            if let Err(e) = crate::nat_watch::spawn(state_dir.clone(), node.sliver_addrs()) {
                log::error!(
                    "conntrack events: {e}: slivers' public ports will not be in the audit"
                );
            }
        }
        node.spawn_periodic();
        log::info!(
            "serving on {}: at most {} connections (+{} for root), read timeout {:?} \
             (open-file limit {nofile})",
            socket.display(),
            limits.max_connections,
            http_serve::RESERVED_CONNECTIONS,
            limits.read_timeout,
        );
        let app = api::router(node.clone());
        // A stop in flight may wait the guest's power-off time, then SIGTERM's.
        let drain = config.guest_stop_timeout + Duration::from_secs(30);
        http_serve::serve(
            listener,
            app,
            limits,
            MAX_BODY_BYTES + 1,
            shutdown_signal(),
            drain,
        )
        .await;
        node.remove_rules().await;
        if let Some(cgroups) = node.supervisor.cgroups() {
            cgroups.tidy();
        }
        Ok(())
    });
    if let Err(e) = std::fs::remove_file(&config.socket) {
        log::warn!("removing {}: {e}", config.socket.display());
    }
    stop_shares.store(true, Ordering::Relaxed);
    if shares_thread.map(|t| t.join()).is_some_and(|r| r.is_err()) {
        log::error!("the share allocation thread panicked");
    }
    result
}

fn rate_str(bps: u64) -> String {
    if bps == u64::MAX {
        "unlimited".into()
    } else {
        bps.to_string()
    }
}
