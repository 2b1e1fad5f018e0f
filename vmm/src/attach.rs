//! Attaching virtio-mmio devices: an MMIO window and an IRQ each, QueueNotify through
//! ioeventfd, interrupts through irqfd, and the `virtio_mmio.device=` kernel argument.

use std::sync::{Arc, Mutex};

use devices::virtio::net::audit::{AuditStage, FlowConfig, SpoofGuard};
use devices::virtio::net::{
    ForwardAll, MacAddr, NetCounters, NetDevice, PacketPolicy, Shaper, Tap,
};

use crate::audit_sink::{NicSink, NullSink, SliverAudit};
use devices::virtio::{MmioTransport, TransportCounters, VirtioDevice, VirtioInterrupt};
use devices::EventFdInterrupt;
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestMemoryMmap;

use crate::arch::layout::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_MAX_DEVICES};
use crate::bus::{Bus, BusError};
use crate::event_loop::EventLoop;
use crate::net_spec::NetSpec;

/// Errors attaching a device; each names the device.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// More devices than slots.
    #[error("--net: at most {VIRTIO_MMIO_MAX_DEVICES} virtio devices")]
    TooMany,
    /// The TAP could not be opened.
    #[error(transparent)]
    Tap(#[from] devices::virtio::net::tap::TapError),
    /// eventfd/irqfd/ioeventfd setup failed.
    #[error("net{index}: {what}: {source}")]
    Resource {
        /// Device index.
        index: usize,
        /// Which step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// MMIO window clash.
    #[error("net{0}: {1}")]
    Bus(usize, BusError),
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

/// Attaches devices in order, handing out MMIO windows and IRQs.
pub struct VirtioAttacher<'a> {
    vm: &'a VmFd,
    mem: &'a GuestMemoryMmap,
    mmio: &'a mut Bus,
    cmdline_args: Vec<String>,
    count: usize,
}

impl std::fmt::Debug for VirtioAttacher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioAttacher")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl<'a> VirtioAttacher<'a> {
    /// Attach to `vm`'s `mmio` bus.
    pub fn new(vm: &'a VmFd, mem: &'a GuestMemoryMmap, mmio: &'a mut Bus) -> Self {
        Self {
            vm,
            mem,
            mmio,
            cmdline_args: Vec::new(),
            count: 0,
        }
    }

    /// Attach a virtio-net device on the TAP of `spec`; its events go to `event_loop`.
    pub fn attach_net(
        &mut self,
        spec: &NetSpec,
        shaper: Option<Arc<Shaper>>,
        audit: Option<&NicAudit>,
        event_loop: &mut EventLoop,
    ) -> Result<AttachedNet, AttachError> {
        let index = self.count;
        let tap = Tap::open(&spec.tap)?;
        let mac = spec.mac_or_derived();
        let res = |what| {
            move |source| AttachError::Resource {
                index,
                what,
                source,
            }
        };
        let policy = nic_policy(spec, mac, audit, index as u8);
        let mut device = NetDevice::new(tap, mac, policy).map_err(res("device eventfds"))?;
        if let Some(shaper) = shaper {
            device.set_shaper(shaper);
        }
        let device = Arc::new(Mutex::new(device));
        let counters = device.lock().unwrap_or_else(|p| p.into_inner()).counters();
        let transport = self.attach(device.clone())?;
        event_loop.add_subscriber(Box::new(device));
        log::info!("net{index}: tap {} mac {mac}", spec.tap);
        Ok(AttachedNet {
            tap: spec.tap.clone(),
            counters,
            transport,
        })
    }
}

/// What the audit stage of a sliver's NICs needs.
#[derive(Debug, Clone)]
pub struct NicAudit {
    /// The sliver's log and capture ring.
    pub audit: Arc<SliverAudit>,
    /// Whether headers go to the capture ring.
    pub capture: bool,
}

/// The policy stage of a NIC: anti-spoofing and audit with a log; anti-spoofing alone when only
/// the guest's address is known; nothing otherwise.
fn nic_policy(
    spec: &NetSpec,
    mac: MacAddr,
    audit: Option<&NicAudit>,
    nic: u8,
) -> Box<dyn PacketPolicy> {
    let guard = SpoofGuard {
        mac: mac.0,
        ipv4: spec.ip,
    };
    match audit {
        Some(a) => Box::new(AuditStage::new(
            Some(guard),
            FlowConfig::default(),
            Box::new(NicSink::new(a.audit.clone(), nic)),
            a.capture,
        )),
        None if spec.ip.is_some() => Box::new(AuditStage::new(
            Some(guard),
            FlowConfig::default(),
            Box::new(NullSink),
            false,
        )),
        None => Box::new(ForwardAll),
    }
}

impl VirtioAttacher<'_> {
    /// Give `device` the next MMIO window and IRQ.
    fn attach(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Arc<TransportCounters>, AttachError> {
        let index = self.count;
        if index >= VIRTIO_MMIO_MAX_DEVICES {
            return Err(AttachError::TooMany);
        }
        let res = |what| {
            move |source| AttachError::Resource {
                index,
                what,
                source,
            }
        };
        let base = VIRTIO_MMIO_BASE + index as u64 * devices::virtio::mmio::MMIO_WINDOW;
        let irq = VIRTIO_IRQ_BASE + index as u32;
        let line = EventFdInterrupt::new().map_err(res("interrupt eventfd"))?;
        self.vm
            .register_irqfd(line.eventfd(), irq)
            .map_err(|e| res("irqfd")(e.into()))?;
        let interrupt = Arc::new(VirtioInterrupt::new(Arc::new(line)));
        let transport =
            MmioTransport::new(device, self.mem.clone(), interrupt).map_err(res("transport"))?;
        let notify = IoEventAddress::Mmio(base + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
        for (queue, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .register_ioevent(evt, &notify, queue as u32)
                .map_err(|e| res("ioeventfd")(e.into()))?;
        }
        let counters = transport.counters();
        self.mmio
            .insert(
                base,
                devices::virtio::mmio::MMIO_WINDOW,
                Arc::new(Mutex::new(transport)),
            )
            .map_err(|e| AttachError::Bus(index, e))?;
        self.cmdline_args
            .push(format!("virtio_mmio.device=4K@{base:#x}:{irq}"));
        self.count += 1;
        Ok(counters)
    }

    /// The `virtio_mmio.device=` arguments for everything attached.
    pub fn cmdline_args(&self) -> &[String] {
        &self.cmdline_args
    }
}
