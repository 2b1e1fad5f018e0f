//! The guest driver: plays the guest on real guest memory. It speaks to the device only
//! through the MMIO transport registers and the split rings in guest memory, as a driver
//! would.

use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::bus_device::BusDevice;
use crate::interrupt::EventFdInterrupt;
use crate::virtio::interrupt_status::VirtioInterrupt;
use crate::virtio::mmio::MmioTransport;
use crate::virtio::virtio_device::VirtioDevice;

/// Guest memory the harness creates.
pub const MEM_SIZE: usize = 64 << 20;
/// Where queue `i`'s rings live: `RING_BASE + i * RING_STRIDE`.
const RING_BASE: u64 = 0x1_0000;
const RING_STRIDE: u64 = 0x1_0000;
/// Per-descriptor data slots for [`GuestDriver::add_buffer`]: `SLOT_BASE + (q * 256 + i) * SLOT`.
const SLOT_BASE: u64 = 0x10_0000;
/// Bytes per data slot (fits a virtio header and a 64 KiB frame).
pub const SLOT: u64 = 0x1_1000;
/// Free guest memory for hand-made tables (indirect descriptors, odd buffers).
pub const SCRATCH: u64 = 0x300_0000;

/// One split-ring descriptor as the guest writes it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawDesc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// VRING_DESC_F_* flags.
    pub flags: u16,
    /// Next descriptor index.
    pub next: u16,
}

#[derive(Debug, Clone, Copy)]
struct DriverQueue {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    used_seen: u16,
}

/// The harness: guest memory, the device's transport, and the driver-side ring state.
pub struct GuestDriver {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The transport under test.
    pub transport: MmioTransport,
    /// The interrupt line (count = how often the device interrupted).
    pub irq: Arc<EventFdInterrupt>,
    queues: Vec<DriverQueue>,
}

impl std::fmt::Debug for GuestDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestDriver")
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

impl GuestDriver {
    /// Fresh guest memory ([`MEM_SIZE`] bytes from 0) and a transport for `device`.
    pub fn new(device: Arc<Mutex<dyn VirtioDevice>>) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .expect("harness guest memory");
        Self::with_memory(device, mem)
    }

    /// A transport for `device` on `mem`, which must cover the harness's addresses (up to
    /// [`MEM_SIZE`]) as one or more regions.
    pub fn with_memory(device: Arc<Mutex<dyn VirtioDevice>>, mem: GuestMemoryMmap) -> Self {
        let irq = Arc::new(EventFdInterrupt::new().expect("irq eventfd"));
        let interrupt = Arc::new(VirtioInterrupt::new(irq.clone()));
        let transport = MmioTransport::new(device, mem.clone(), interrupt).expect("transport");
        Self {
            mem,
            transport,
            irq,
            queues: Vec::new(),
        }
    }

    /// Read a 32-bit register.
    pub fn read_reg(&mut self, offset: u32) -> u32 {
        let mut d = [0u8; 4];
        self.transport.read(u64::from(offset), &mut d);
        u32::from_le_bytes(d)
    }

    /// Write a 32-bit register.
    pub fn write_reg(&mut self, offset: u32, value: u32) {
        self.transport
            .write(u64::from(offset), &value.to_le_bytes());
    }

    /// Device status register.
    pub fn status(&mut self) -> u32 {
        self.read_reg(VIRTIO_MMIO_STATUS)
    }

    /// Features the device offers.
    pub fn device_features(&mut self) -> u64 {
        self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let lo = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
        self.write_reg(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let hi = self.read_reg(VIRTIO_MMIO_DEVICE_FEATURES);
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// ACKNOWLEDGE, DRIVER, write `features`, FEATURES_OK. Returns the status read back.
    pub fn negotiate(&mut self, features: u64) -> u32 {
        self.write_reg(VIRTIO_MMIO_STATUS, 0);
        self.write_reg(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.write_reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER,
        );
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write_reg(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.write_reg(
            VIRTIO_MMIO_STATUS,
            VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK,
        );
        self.status()
    }

    /// Program queue `index` with `size` entries at the harness's ring addresses, and enable it.
    pub fn setup_queue(&mut self, index: u16, size: u16) {
        let desc = RING_BASE + u64::from(index) * RING_STRIDE;
        let q = DriverQueue {
            size,
            desc,
            avail: desc + 0x4000,
            used: desc + 0x8000,
            avail_idx: 0,
            used_seen: 0,
        };
        // A driver starts from clean rings.
        self.mem
            .write_slice(&[0u8; 0x8000 + 8], GuestAddress(q.avail))
            .expect("clear rings");
        self.write_reg(VIRTIO_MMIO_QUEUE_SEL, u32::from(index));
        self.write_reg(VIRTIO_MMIO_QUEUE_NUM, u32::from(size));
        for (lo, hi, addr) in [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                q.desc,
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                q.avail,
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                q.used,
            ),
        ] {
            self.write_reg(lo, addr as u32);
            self.write_reg(hi, (addr >> 32) as u32);
        }
        self.write_reg(VIRTIO_MMIO_QUEUE_READY, 1);
        let slot = usize::from(index);
        if self.queues.len() <= slot {
            self.queues.resize(slot + 1, q);
        }
        self.queues[slot] = q;
    }

    /// Set DRIVER_OK; returns the status read back.
    pub fn driver_ok(&mut self) -> u32 {
        let s = self.status();
        self.write_reg(VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK);
        self.status()
    }

    /// The whole bring-up with `features` and every queue at `queue_size`; panics unless the
    /// device ends in DRIVER_OK.
    pub fn init(&mut self, features: u64, queue_count: u16, queue_size: u16) {
        let s = self.negotiate(features);
        assert_ne!(s & VIRTIO_CONFIG_S_FEATURES_OK, 0, "FEATURES_OK refused");
        for q in 0..queue_count {
            self.setup_queue(q, queue_size);
        }
        let s = self.driver_ok();
        assert_ne!(
            s & VIRTIO_CONFIG_S_DRIVER_OK,
            0,
            "DRIVER_OK refused: status {s:#x}"
        );
    }

    fn queue(&self, q: u16) -> DriverQueue {
        self.queues[usize::from(q)]
    }

    /// Write descriptor `index` of queue `q` exactly as given (for malformed-chain tests).
    pub fn write_desc(&mut self, q: u16, index: u16, d: RawDesc) {
        let base = self.queue(q).desc + u64::from(index) * 16;
        self.write_raw_desc(base, d);
    }

    /// Write a descriptor at any guest address (indirect tables).
    pub fn write_raw_desc(&mut self, addr: u64, d: RawDesc) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..16].copy_from_slice(&d.next.to_le_bytes());
        self.mem
            .write_slice(&b, GuestAddress(addr))
            .expect("descriptor write");
    }

    /// Put `head` in the avail ring of queue `q` (no kick).
    pub fn publish(&mut self, q: u16, head: u16) {
        let dq = &mut self.queues[usize::from(q)];
        let slot = dq.avail + 4 + u64::from(dq.avail_idx % dq.size) * 2;
        self.mem
            .write_obj(head, GuestAddress(slot))
            .expect("avail ring");
        dq.avail_idx = dq.avail_idx.wrapping_add(1);
        let idx = dq.avail_idx;
        let at = GuestAddress(dq.avail + 2);
        self.mem.write_obj(idx, at).expect("avail idx");
    }

    /// Put `count` heads in the avail ring of queue `q` and publish them with one index
    /// update, as a driver does for a batch: heads `0..count`, whose descriptors (and data)
    /// were written before, e.g. by [`GuestDriver::add_buffer`]. No kick.
    pub fn republish(&mut self, q: u16, count: u16) {
        let dq = &mut self.queues[usize::from(q)];
        for head in 0..count {
            let slot = dq.avail + 4 + u64::from(dq.avail_idx.wrapping_add(head) % dq.size) * 2;
            self.mem
                .write_obj(head, GuestAddress(slot))
                .expect("avail ring");
        }
        dq.avail_idx = dq.avail_idx.wrapping_add(count);
        let idx = dq.avail_idx;
        let at = GuestAddress(dq.avail + 2);
        self.mem.write_obj(idx, at).expect("avail idx");
    }

    /// Put `heads` in the avail ring of queue `q` and publish them with one index update, as a
    /// driver does for a batch. No kick.
    pub fn publish_many(&mut self, q: u16, heads: &[u16]) {
        let dq = &mut self.queues[usize::from(q)];
        for (i, &head) in heads.iter().enumerate() {
            let at = dq.avail_idx.wrapping_add(i as u16) % dq.size;
            let slot = dq.avail + 4 + u64::from(at) * 2;
            self.mem
                .write_obj(head, GuestAddress(slot))
                .expect("avail ring");
        }
        dq.avail_idx = dq.avail_idx.wrapping_add(heads.len() as u16);
        let idx = dq.avail_idx;
        let at = GuestAddress(dq.avail + 2);
        self.mem.write_obj(idx, at).expect("avail idx");
    }

    /// How many used entries the device added to queue `q` since the last call (their
    /// contents are not read).
    pub fn count_used(&mut self, q: u16) -> u16 {
        let dq = self.queue(q);
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(dq.used + 2))
            .expect("used idx");
        self.queues[usize::from(q)].used_seen = idx;
        idx.wrapping_sub(dq.used_seen)
    }

    /// Overwrite the avail index of queue `q` (for the "index jumps" attack).
    pub fn set_avail_idx(&mut self, q: u16, idx: u16) {
        let at = GuestAddress(self.queue(q).avail + 2);
        self.mem.write_obj(idx, at).expect("avail idx");
        self.queues[usize::from(q)].avail_idx = idx;
    }

    /// Guest address of the data slot of descriptor `index` in queue `q`.
    pub fn slot_addr(q: u16, index: u16) -> u64 {
        SLOT_BASE + (u64::from(q) * 256 + u64::from(index)) * SLOT
    }

    /// Post one single-descriptor buffer using the descriptor slot that the next avail entry
    /// maps to: device-readable `data` (TX) or a device-writable `len`-byte buffer (RX).
    /// Returns the head index. Descriptor slots are reused round-robin, so at most
    /// `queue size` buffers may be outstanding.
    pub fn add_buffer(&mut self, q: u16, data: Option<&[u8]>, len: u32) -> u16 {
        let dq = self.queue(q);
        let head = dq.avail_idx % dq.size;
        let addr = Self::slot_addr(q, head);
        let (len, flags) = match data {
            Some(bytes) => {
                self.mem
                    .write_slice(bytes, GuestAddress(addr))
                    .expect("buffer write");
                (bytes.len() as u32, 0)
            }
            None => (len, VRING_DESC_F_WRITE as u16),
        };
        self.write_desc(
            q,
            head,
            RawDesc {
                addr,
                len,
                flags,
                next: 0,
            },
        );
        self.publish(q, head);
        head
    }

    /// Post a chain of descriptors starting at table index `first` (consecutive indexes).
    pub fn add_chain(&mut self, q: u16, first: u16, descs: &[(u64, u32, bool)]) -> u16 {
        let size = self.queue(q).size;
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let index = (first + i as u16) % size;
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let last = i + 1 == descs.len();
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = (index + 1) % size;
            self.write_desc(
                q,
                index,
                RawDesc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }
        self.publish(q, first);
        first
    }

    /// Notify queue `q` through the QueueNotify register.
    pub fn kick(&mut self, q: u16) {
        self.write_reg(VIRTIO_MMIO_QUEUE_NOTIFY, u32::from(q));
    }

    /// Used entries `(id, len)` the device added since the last call.
    pub fn take_used(&mut self, q: u16) -> Vec<(u32, u32)> {
        let dq = self.queue(q);
        let idx: u16 = self
            .mem
            .read_obj(GuestAddress(dq.used + 2))
            .expect("used idx");
        let mut out = Vec::new();
        let mut seen = dq.used_seen;
        while seen != idx {
            let at = dq.used + 4 + u64::from(seen % dq.size) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used id");
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).expect("used len");
            out.push((id, len));
            seen = seen.wrapping_add(1);
        }
        self.queues[usize::from(q)].used_seen = seen;
        out
    }

    /// Write bytes into guest memory.
    pub fn mem_write(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("write");
    }

    /// Read `len` bytes of guest memory.
    pub fn read_mem(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(addr))
            .expect("read");
        v
    }
}
