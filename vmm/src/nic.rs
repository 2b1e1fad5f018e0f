//! A sliver's network devices: for each `--net`, open its TAP, choose the stages of its
//! packet pipelines (the sliver's shaper, anti-spoofing when its address is known, the audit
//! when it keeps a log), and attach the virtio-net device to the VM.

use std::sync::{Arc, Mutex};

use devices::virtio::net::audit::FlowConfig;
use devices::virtio::net::tap::TapError;
use devices::virtio::net::{
    AntiSpoofing, AuditStage, MacAddr, NetCounters, NetDevice, Shaper, Stages, Tap,
};
use devices::virtio::TransportCounters;

use crate::attach::{AttachError, VirtioAttacher};
use crate::audit_sink::{NicSink, SliverAudit};
use crate::event_loop::EventLoop;
use crate::net_spec::NetSpec;

/// Errors setting up a NIC; each names the TAP or the NIC (`netN`, the Nth `--net`).
#[derive(Debug, thiserror::Error)]
pub enum NicError {
    /// The TAP could not be opened (the message names it).
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The device's eventfds or timers could not be made.
    #[error("net{index}: device eventfds: {source}")]
    Device {
        /// Which NIC.
        index: usize,
        /// Why.
        source: std::io::Error,
    },
    /// The transport could not be attached.
    #[error("--net: {0}")]
    Attach(#[from] AttachError),
}

/// What the audit stage of a sliver's NICs needs.
#[derive(Debug, Clone)]
pub struct NicAudit {
    /// The sliver's log and capture ring.
    pub audit: Arc<SliverAudit>,
    /// Whether headers go to the capture ring.
    pub capture: bool,
}

/// What the VMM keeps of an attached network device.
#[derive(Debug)]
pub struct AttachedNet {
    /// TAP name.
    pub tap: String,
    /// Packet counters.
    pub counters: Arc<NetCounters>,
    /// Transport counters.
    pub transport: Arc<TransportCounters>,
}

/// The optional stages of NIC number `nic`: the sliver's `shaper`, anti-spoofing always (the
/// NIC's MAC, untagged IPv4/ARP/IPv6 only, once known the guest's IPv4 address, and the
/// destinations it may not send to), the audit when the sliver keeps a log.
fn stages(
    spec: &NetSpec,
    mac: MacAddr,
    shaper: Option<Arc<Shaper>>,
    audit: Option<&NicAudit>,
    nic: u8,
) -> Stages {
    let anti_spoofing = AntiSpoofing {
        mac: mac.0,
        ipv4: spec.ip,
        deny_dst: spec.deny_dst.clone(),
    };
    Stages {
        shaper,
        anti_spoofing: Some(anti_spoofing),
        audit: audit.map(|a| {
            AuditStage::new(
                FlowConfig::default(),
                Box::new(NicSink::new(a.audit.clone(), nic)),
                a.capture,
            )
        }),
    }
}

/// Attach NIC number `index`, a virtio-net device on the TAP of `spec` (`tap` when it is
/// open already, else opened here); its events go to `event_loop`.
pub fn attach(
    attacher: &mut VirtioAttacher<'_>,
    index: usize,
    spec: &NetSpec,
    tap: Option<Tap>,
    shaper: Option<Arc<Shaper>>,
    audit: Option<&NicAudit>,
    event_loop: &mut EventLoop,
) -> Result<AttachedNet, NicError> {
    let tap = match tap {
        Some(tap) => tap,
        None => Tap::open(&spec.tap)?,
    };
    let mac = spec.mac_or_derived();
    let nic = u8::try_from(index).unwrap_or(u8::MAX);
    let stages = stages(spec, mac, shaper, audit, nic);
    let mut device =
        NetDevice::new(tap, mac, stages).map_err(|source| NicError::Device { index, source })?;
    if !spec.offloads {
        device = device.without_offloads();
    }
    let counters = device.counters();
    let device = Arc::new(Mutex::new(device));
    let transport = attacher.attach(device.clone(), &format!("net{index}"))?;
    event_loop.add_subscriber(Box::new(device));
    log::info!("net{index}: tap {} mac {mac}", spec.tap);
    Ok(AttachedNet {
        tap: spec.tap.clone(),
        counters,
        transport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anti_spoofing_is_always_on_and_pins_the_address_once_known() {
        let plain: NetSpec = "tap=a".parse().expect("spec");
        let pinned: NetSpec = "tap=a,ip=10.0.0.2".parse().expect("spec");
        let mac = plain.mac_or_derived();
        let s = stages(&plain, mac, None, None, 0);
        assert_eq!(
            s.anti_spoofing,
            Some(AntiSpoofing {
                mac: mac.0,
                ipv4: None,
                deny_dst: Vec::new(),
            })
        );
        assert!(s.audit.is_none() && s.shaper.is_none());
        let s = stages(&pinned, mac, None, None, 0);
        assert_eq!(
            s.anti_spoofing,
            Some(AntiSpoofing {
                mac: mac.0,
                ipv4: Some([10, 0, 0, 2].into()),
                deny_dst: Vec::new(),
            })
        );
        assert!(s.audit.is_none(), "no audit stage without a log");
    }
}
