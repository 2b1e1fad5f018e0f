//! What a virtio device implements so a transport can drive it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::interrupt_status::VirtioInterrupt;

/// Everything a device gets when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory the rings and buffers live in.
    pub mem: GuestMemoryMmap,
    /// The configured queues, in queue-index order.
    pub queues: Vec<Queue>,
    /// How the device interrupts the driver.
    pub interrupt: Arc<VirtioInterrupt>,
    /// Where the device reports that it gave up (DEVICE_NEEDS_RESET).
    pub health: Arc<DeviceHealth>,
}

/// Set by a device that found the driver's rings unusable; the transport shows it as
/// DEVICE_NEEDS_RESET until the driver resets the device.
#[derive(Debug, Default)]
pub struct DeviceHealth {
    needs_reset: AtomicBool,
}

impl DeviceHealth {
    /// Mark the device broken until reset and tell the driver (config-change interrupt).
    pub fn fail(&self, why: &str, interrupt: &VirtioInterrupt) {
        log::warn!("virtio: device needs reset: {why}");
        self.needs_reset.store(true, Ordering::SeqCst);
        interrupt.signal_config_change();
    }

    /// Whether the device gave up.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Clear on device reset.
    pub fn clear(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// Wrong number of queues.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// What the device needs.
        expected: usize,
        /// What it was given.
        got: usize,
    },
    /// A queue's ring cannot be used (its areas are outside guest memory or misaligned).
    #[error("{queue} queue: {source}")]
    Ring {
        /// Which queue.
        queue: &'static str,
        /// What is wrong with it.
        source: crate::virtio::split_ring::RingError,
    },
    /// A resource (eventfd clone, registration) failed.
    #[error("activating: {0}")]
    Io(#[from] std::io::Error),
}

/// A virtio device behind a transport. All methods are called with the device locked, from a
/// vCPU thread (register accesses) — they must not block.
pub trait VirtioDevice: Send {
    /// virtio device ID (1 = network).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// One notification eventfd per queue, owned by the device for its whole life. The VMM
    /// binds them to QueueNotify with ioeventfd; the transport writes them when it sees a
    /// QueueNotify itself.
    fn queue_evts(&self) -> &[EventFd];
    /// Features the device offers (including transport features such as VERSION_1).
    fn avail_features(&self) -> u64;
    /// Whether `features` (a subset of `avail_features`) is a set the device works with;
    /// `Err` names why not, and the transport refuses FEATURES_OK (virtio 1.2 section 2.2.2:
    /// the device "MUST fail to set the FEATURES_OK device status bit" for a subset it does
    /// not accept).
    fn check_features(&self, _features: u64) -> Result<(), String> {
        Ok(())
    }
    /// The features the driver accepted (a subset of `avail_features`), at FEATURES_OK.
    fn set_acked_features(&mut self, features: u64);
    /// Read device configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Start processing queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stop processing and drop queue state; the driver will set the device up again.
    fn reset(&mut self);
}
