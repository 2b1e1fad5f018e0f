//! The virtio-blk device: its virtio interface, its event-loop subscriber, and the loop that
//! answers requests.

use std::num::Wrapping;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::blk_config::{self, CONFIG_LEN};
use super::blk_counters::BlockCounters;
use super::disk::Disk;
use super::request::{parse, Op, Parsed, RequestBuf, Status, StatusByte, Target, IOERR};
use super::{ID_BYTES, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::virtio_device::{ActivateError, Activation, DeviceHealth, VirtioDevice};
use crate::virtio::{feature, VirtioInterrupt};

const EV_STATE: u32 = 0;
const EV_QUEUE: u32 = 1;

/// The device while the driver has it running.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
    health: Arc<DeviceHealth>,
}

/// A virtio-blk device on a [`Disk`].
pub struct BlockDevice {
    disk: Disk,
    config: [u8; CONFIG_LEN],
    avail_features: u64,
    acked_features: u64,
    counters: Arc<BlockCounters>,
    queue_evts: [EventFd; 1],
    state_evt: EventFd,
    active: Option<Active>,
    buf: RequestBuf,
}

impl std::fmt::Debug for BlockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockDevice")
            .field("path", &self.disk.path())
            .field("active", &self.active.is_some())
            .field("counters", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

/// How a request ended: its status and the bytes the device wrote into the chain.
struct Answer {
    status: Status,
    written: usize,
}

impl BlockDevice {
    /// A device on `disk`. It offers VERSION_1, SEG_MAX and BLK_SIZE, and RO for a read-only
    /// disk, else FLUSH, DISCARD and WRITE_ZEROES.
    ///
    /// # Errors
    /// Creating its eventfds failed.
    pub fn new(disk: Disk) -> std::io::Result<Self> {
        let mut avail_features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE);
        avail_features |= if disk.read_only() {
            feature(VIRTIO_BLK_F_RO)
        } else {
            feature(VIRTIO_BLK_F_FLUSH)
                | feature(VIRTIO_BLK_F_DISCARD)
                | feature(VIRTIO_BLK_F_WRITE_ZEROES)
        };
        Ok(Self {
            config: blk_config::config_bytes(disk.sectors()),
            disk,
            avail_features,
            acked_features: 0,
            counters: Arc::new(BlockCounters::default()),
            queue_evts: [EventFd::new(libc::EFD_NONBLOCK)?],
            state_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            active: None,
            buf: RequestBuf::default(),
        })
    }

    /// The device's counters (shared; stays valid after the device is gone).
    pub fn counters(&self) -> Arc<BlockCounters> {
        self.counters.clone()
    }

    /// The disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Answer what the driver queued, a queue's worth at a time (then the queue is kicked
    /// again, so other devices get their turn).
    fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let avail_ok = active
            .queue
            .avail_idx(mem, Ordering::Acquire)
            .is_ok_and(|idx| (idx - Wrapping(active.queue.next_avail())).0 <= active.queue.size());
        if !avail_ok {
            self.counters.needs_reset.fetch_add(1, Ordering::Relaxed);
            if let Some(active) = self.active.take() {
                active.health.fail(
                    "virtio-blk: avail index moved by more than the queue size",
                    &active.interrupt,
                );
            }
            return;
        }
        let target = Target {
            sectors: self.disk.sectors(),
            read_only: self.disk.read_only(),
            acked: self.acked_features,
        };
        let mut answered = 0u16;
        let mut broken = false;
        loop {
            let Some(mut chain) = active.queue.pop_descriptor_chain(mem) else {
                if let Ok(true) = active.queue.enable_notification(mem) {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let written = match parse(&mut chain, mem, &mut self.buf, target) {
                Parsed::Valid {
                    op,
                    data_len,
                    status,
                } => {
                    let a = execute(&self.disk, &self.buf, op, data_len, &self.counters);
                    finish(status, a.status, a.written)
                }
                Parsed::Refused { status, code, why } => {
                    log::debug!("virtio-blk: request refused ({code}): {why}");
                    let counter = if code == IOERR {
                        &self.counters.errors
                    } else {
                        &self.counters.unsupported
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    finish(status, code, 0)
                }
                Parsed::Malformed(why) => {
                    log::debug!("virtio-blk: chain {head} dropped: {why}");
                    self.counters
                        .malformed_chains
                        .fetch_add(1, Ordering::Relaxed);
                    0
                }
            };
            if active.queue.add_used(mem, head, written).is_err() {
                broken = true;
                break;
            }
            answered += 1;
            if answered >= QUEUE_SIZE {
                if let Err(e) = self.queue_evts[0].write(1) {
                    log::error!("virtio-blk: re-kicking the queue: {e}");
                }
                break;
            }
        }
        if answered > 0 && active.queue.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        if broken {
            self.counters.needs_reset.fetch_add(1, Ordering::Relaxed);
            if let Some(active) = self.active.take() {
                active.health.fail(
                    "virtio-blk: used ring is outside guest memory",
                    &active.interrupt,
                );
            }
        }
    }
}

/// Write the status byte; returns the used length (`written` data bytes and the status).
fn finish(at: StatusByte, status: Status, written: usize) -> u32 {
    // SAFETY: the device holds guest memory for this whole call.
    unsafe { at.set(status) };
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}

/// Do a checked request on `disk`; its data is in `buf`.
fn execute(disk: &Disk, buf: &RequestBuf, op: Op, data_len: usize, c: &BlockCounters) -> Answer {
    let ok = |written| Answer { status: 0, written };
    let result = match op {
        // SAFETY: the iovecs point into guest memory that `parse` checked with get_slice and
        // that stays mapped for this call (the device holds the memory).
        Op::Read { sector } => unsafe { disk.read_at(buf.iovs.as_slice(), sector * SECTOR_SIZE) }
            .map(|()| {
                c.read_ops.fetch_add(1, Ordering::Relaxed);
                c.read_bytes.fetch_add(data_len as u64, Ordering::Relaxed);
                ok(data_len)
            }),
        // SAFETY: as above; the kernel only reads through them.
        Op::Write { sector } => unsafe { disk.write_at(buf.iovs.as_slice(), sector * SECTOR_SIZE) }
            .map(|()| {
                c.write_ops.fetch_add(1, Ordering::Relaxed);
                c.write_bytes.fetch_add(data_len as u64, Ordering::Relaxed);
                ok(0)
            }),
        Op::Flush => disk.flush().map(|()| {
            c.flush_ops.fetch_add(1, Ordering::Relaxed);
            ok(0)
        }),
        Op::GetId => {
            let n = data_len.min(ID_BYTES);
            let mut done = 0;
            for iov in buf.iovs.as_slice() {
                let k = iov.iov_len.min(n - done);
                // SAFETY: `iov` describes writable guest memory checked by `parse`; `k` bytes
                // fit it, and the source is the disk's own serial.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        disk.id()[done..].as_ptr(),
                        iov.iov_base.cast(),
                        k,
                    );
                }
                done += k;
                if done == n {
                    break;
                }
            }
            Ok(ok(n))
        }
        Op::Discard(n) | Op::WriteZeroes(n) => buf.ranges[..n]
            .iter()
            .try_for_each(|r| {
                let (offset, len) = (r.sector * SECTOR_SIZE, u64::from(r.sectors) * SECTOR_SIZE);
                match op {
                    Op::Discard(_) => disk.discard(offset, len),
                    _ => disk.write_zeroes(offset, len, r.unmap),
                }
            })
            .map(|()| {
                c.discard_ops.fetch_add(1, Ordering::Relaxed);
                ok(0)
            }),
    };
    result.unwrap_or_else(|e| {
        log::warn!("virtio-blk {}: {op:?}: {e}", disk.path().display());
        c.errors.fetch_add(1, Ordering::Relaxed);
        Answer {
            status: IOERR,
            written: 0,
        }
    })
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::config_space::read_config(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // virtio 1.2 section 5.2.5: only `writeback` is writable, with CONFIG_WCE (not
        // offered).
        log::debug!(
            "virtio-blk: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            mut queues,
            interrupt,
            health,
        } = activation;
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount {
                expected: 1,
                got: queues.len(),
            });
        }
        self.active = Some(Active {
            mem,
            queue: queues.remove(0),
            interrupt,
            health,
        });
        if let Err(e) = self.state_evt.write(1) {
            log::error!("virtio-blk: waking the event loop: {e}");
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}

impl MutEventSubscriber for BlockDevice {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EV_STATE => {
                let _ = self.state_evt.read();
                self.process_queue();
            }
            EV_QUEUE => {
                let _ = self.queue_evts[0].read();
                self.process_queue();
            }
            other => log::error!("virtio-blk: unexpected event data {other}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for events in [
            Events::with_data(&self.state_evt, EV_STATE, EventSet::IN),
            Events::with_data(&self.queue_evts[0], EV_QUEUE, EventSet::IN),
        ] {
            if let Err(e) = ops.add(events) {
                log::error!("virtio-blk: registering with the event loop: {e:?}");
            }
        }
    }
}
