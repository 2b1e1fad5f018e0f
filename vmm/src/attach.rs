//! Attaching virtio-mmio devices to the VM: an MMIO window and an IRQ each, QueueNotify
//! through ioeventfd, interrupts through irqfd, and the `virtio_mmio.device=` kernel argument.

use std::sync::{Arc, Mutex};

use devices::virtio::{MmioTransport, TransportCounters, VirtioDevice, VirtioInterrupt};
use devices::EventFdInterrupt;
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY;
use vm_memory::GuestMemoryMmap;

use crate::arch::layout::{VIRTIO_IRQ_BASE, VIRTIO_MMIO_BASE, VIRTIO_MMIO_MAX_DEVICES};
use crate::bus::{Bus, BusError};

/// Errors attaching a device; each names the device (`diskN`, `netN`).
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// More devices than slots.
    #[error("at most {VIRTIO_MMIO_MAX_DEVICES} virtio devices")]
    TooMany,
    /// eventfd/irqfd/ioeventfd setup failed.
    #[error("{name}: {what}: {source}")]
    Resource {
        /// The device.
        name: String,
        /// Which step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// MMIO window clash.
    #[error("{0}: {1}")]
    Bus(String, BusError),
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

    /// How many devices are attached (the next one gets this slot).
    pub fn count(&self) -> usize {
        self.count
    }
}

impl VirtioAttacher<'_> {
    /// Give `device` (called `name` in errors) the next MMIO window and IRQ.
    pub fn attach(
        &mut self,
        device: Arc<Mutex<dyn VirtioDevice>>,
        name: &str,
    ) -> Result<Arc<TransportCounters>, AttachError> {
        let index = self.count;
        if index >= VIRTIO_MMIO_MAX_DEVICES {
            return Err(AttachError::TooMany);
        }
        let res = |what| {
            move |source| AttachError::Resource {
                name: name.to_string(),
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
            .map_err(|e| AttachError::Bus(name.to_string(), e))?;
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
