//! The virtio-mmio transport, version 2 (virtio 1.x "modern" register layout).
//!
//! Everything a driver writes is validated here: register access width, status transitions,
//! feature subsets, queue sizes and ring addresses. Bad input never panics; it is ignored and
//! counted, or the device is put in DEVICE_NEEDS_RESET.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::feature;
use super::interrupt_status::VirtioInterrupt;
use super::virtio_device::{Activation, DeviceHealth, VirtioDevice};
use crate::bus_device::BusDevice;

/// "virt" in little endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// Modern (virtio 1.x) register layout.
const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the driver ("SLVS").
const VENDOR_ID: u32 = 0x5356_4c53;
/// Size of the register window including config space.
pub const MMIO_WINDOW: u64 = 0x1000;

/// Counts of driver mistakes the transport refused. Readable from any thread.
#[derive(Debug, Default)]
pub struct TransportCounters {
    /// Register accesses of the wrong width, at unknown offsets, or read-only/write-only misuse.
    pub bad_register_access: AtomicU64,
    /// Writes that the current device status does not allow (e.g. queue setup after DRIVER_OK).
    pub bad_state_transition: AtomicU64,
    /// Invalid queue configuration (size 0, not a power of two, above max; bad ring addresses).
    pub bad_queue_config: AtomicU64,
    /// Times the device was put into DEVICE_NEEDS_RESET.
    pub needs_reset: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// The transport of one device: a [`BusDevice`] for the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    health: Arc<DeviceHealth>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    counters: Arc<TransportCounters>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("status", &self.status)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn lock(dev: &Mutex<dyn VirtioDevice>) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_half(value: &mut u64, high: bool, half: u32) {
    if high {
        *value = (*value & 0xffff_ffff) | (u64::from(half) << 32);
    } else {
        *value = (*value & !0xffff_ffff) | u64::from(half);
    }
}

impl MmioTransport {
    /// A transport for `device`, whose queues live in `mem` and which interrupts via
    /// `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let (max_sizes, queue_evts) = {
            let dev = lock(&device);
            let evts = dev
                .queue_evts()
                .iter()
                .map(EventFd::try_clone)
                .collect::<Result<Vec<_>, _>>()?;
            (dev.queue_max_sizes().to_vec(), evts)
        };
        if queue_evts.len() != max_sizes.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "device has a different number of queue eventfds and queues",
            ));
        }
        let queues = max_sizes
            .into_iter()
            .map(|max| {
                Queue::new(max).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("queue: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            health: Arc::new(DeviceHealth::default()),
            queues,
            queue_evts,
            counters: Arc::new(TransportCounters::default()),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
        })
    }

    /// The queue notification eventfds, for ioeventfd registration at
    /// `base + VIRTIO_MMIO_QUEUE_NOTIFY` with the queue index as datamatch.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The transport's counters.
    pub fn counters(&self) -> Arc<TransportCounters> {
        self.counters.clone()
    }

    /// Device status as the driver sees it.
    pub fn status(&self) -> u32 {
        if self.health.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn has(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue that is
    /// not yet ready.
    fn queue_writable(&mut self) -> Option<&mut Queue> {
        let allowed = self.has(VIRTIO_CONFIG_S_FEATURES_OK) && !self.has(VIRTIO_CONFIG_S_DRIVER_OK);
        if !allowed {
            bump(&self.counters.bad_state_transition);
            return None;
        }
        match self.queues.get_mut(self.queue_sel as usize) {
            Some(q) if !q.ready() => Some(q),
            Some(_) => {
                bump(&self.counters.bad_state_transition);
                None
            }
            None => {
                bump(&self.counters.bad_register_access);
                None
            }
        }
    }

    fn needs_reset(&mut self, why: &str) {
        log::warn!("virtio-mmio: device needs reset: {why}");
        bump(&self.counters.needs_reset);
        self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config_change();
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.interrupt.clear();
        self.health.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
    }

    fn features_ok(&mut self) -> bool {
        let offered = lock(&self.device).avail_features();
        let accepted = self.driver_features;
        if accepted & !offered != 0 {
            log::warn!(
                "virtio-mmio: driver accepted unoffered features {:#x}",
                accepted & !offered
            );
            return false;
        }
        if accepted & feature(VIRTIO_F_VERSION_1) == 0 {
            log::warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers unsupported)");
            return false;
        }
        let mut device = lock(&self.device);
        if let Err(why) = device.check_features(accepted) {
            log::warn!("virtio-mmio: features {accepted:#x} refused: {why}");
            return false;
        }
        device.set_acked_features(accepted);
        true
    }

    fn activate(&mut self) -> Result<(), String> {
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(format!("queue {i} not ready at DRIVER_OK"));
            }
            if !q.is_valid(&self.mem) {
                return Err(format!("queue {i} has an invalid size or ring address"));
            }
        }
        let queues = self
            .queues
            .iter()
            .map(|q| Queue::try_from(q.state()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("copying queue state: {e}"))?;
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            health: self.health.clone(),
        };
        lock(&self.device)
            .activate(activation)
            .map_err(|e| e.to_string())
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        // Bits may only be added, one step at a time, in the order the spec gives.
        let current = self.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let added = value & !current;
        let expected_next = match current {
            0 => VIRTIO_CONFIG_S_ACKNOWLEDGE,
            s if s == VIRTIO_CONFIG_S_ACKNOWLEDGE => VIRTIO_CONFIG_S_DRIVER,
            s if s == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER => {
                VIRTIO_CONFIG_S_FEATURES_OK
            }
            s if s
                == VIRTIO_CONFIG_S_ACKNOWLEDGE
                    | VIRTIO_CONFIG_S_DRIVER
                    | VIRTIO_CONFIG_S_FEATURES_OK =>
            {
                VIRTIO_CONFIG_S_DRIVER_OK
            }
            _ => 0,
        };
        if value & current != current || added != expected_next || added == 0 {
            bump(&self.counters.bad_state_transition);
            return;
        }
        match added {
            VIRTIO_CONFIG_S_FEATURES_OK => {
                if self.features_ok() {
                    self.status |= added;
                } else {
                    bump(&self.counters.bad_state_transition);
                }
            }
            VIRTIO_CONFIG_S_DRIVER_OK => match self.activate() {
                Ok(()) => self.status |= added,
                Err(why) => {
                    bump(&self.counters.bad_queue_config);
                    self.needs_reset(&why);
                }
            },
            _ => self.status |= added,
        }
    }

    fn read_register(&mut self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MMIO_MAGIC,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => lock(&self.device).device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            VIRTIO_MMIO_QUEUE_NUM_MAX => {
                self.selected_queue().map_or(0, |q| u32::from(q.max_size()))
            }
            VIRTIO_MMIO_QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            _ => {
                bump(&self.counters.bad_register_access);
                0
            }
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let allowed =
                    self.has(VIRTIO_CONFIG_S_DRIVER) && !self.has(VIRTIO_CONFIG_S_FEATURES_OK);
                match (allowed, self.driver_features_sel) {
                    (true, 0) => set_half(&mut self.driver_features, false, value),
                    (true, 1) => set_half(&mut self.driver_features, true, value),
                    (true, _) => {} // higher feature words: nothing offered there
                    (false, _) => bump(&self.counters.bad_state_transition),
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = value,
            VIRTIO_MMIO_QUEUE_NUM => {
                let counters = self.counters.clone();
                if let Some(q) = self.queue_writable() {
                    let valid = u16::try_from(value)
                        .ok()
                        .filter(|&n| n != 0 && n.is_power_of_two() && n <= q.max_size());
                    match valid {
                        Some(n) => q.set_size(n),
                        None => bump(&counters.bad_queue_config),
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => {
                if value == 0 {
                    // Disabling a queue is allowed only while it is being set up.
                    if let Some(q) = self.queue_writable() {
                        q.set_ready(false);
                    }
                } else if let Some(q) = self.queue_writable() {
                    let valid = q.size() != 0
                        && q.desc_table() != 0
                        && q.avail_ring() != 0
                        && q.used_ring() != 0;
                    if valid {
                        q.set_ready(true);
                    } else {
                        bump(&self.counters.bad_queue_config);
                        self.needs_reset(
                            "queue enabled before its size and ring addresses were set",
                        );
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                let evt = self.queue_evts.get(value as usize);
                match evt {
                    Some(evt) if self.has(VIRTIO_CONFIG_S_DRIVER_OK) => {
                        if let Err(e) = evt.write(1) {
                            log::error!("virtio-mmio: queue {value} notify: {e}");
                        }
                    }
                    _ => bump(&self.counters.bad_register_access),
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            VIRTIO_MMIO_QUEUE_DESC_LOW
            | VIRTIO_MMIO_QUEUE_DESC_HIGH
            | VIRTIO_MMIO_QUEUE_AVAIL_LOW
            | VIRTIO_MMIO_QUEUE_AVAIL_HIGH
            | VIRTIO_MMIO_QUEUE_USED_LOW
            | VIRTIO_MMIO_QUEUE_USED_HIGH => {
                if let Some(q) = self.queue_writable() {
                    let (lo, hi) = if offset & 4 == 0 {
                        (Some(value), None)
                    } else {
                        (None, Some(value))
                    };
                    match offset {
                        VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
                            q.set_desc_table_address(lo, hi)
                        }
                        VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
                            q.set_avail_ring_address(lo, hi)
                        }
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => bump(&self.counters.bad_register_access),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            lock(&self.device).read_config(offset - config, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 || !offset.is_multiple_of(4) {
            bump(&self.counters.bad_register_access);
            return;
        }
        let value = self.read_register(offset as u32);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let config = u64::from(VIRTIO_MMIO_CONFIG);
        if offset >= config {
            if self.has(VIRTIO_CONFIG_S_DRIVER) {
                lock(&self.device).write_config(offset - config, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            } else {
                bump(&self.counters.bad_state_transition);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            bump(&self.counters.bad_register_access);
            return;
        };
        if !offset.is_multiple_of(4) {
            bump(&self.counters.bad_register_access);
            return;
        }
        self.write_register(offset as u32, u32::from_le_bytes(bytes));
    }
}
