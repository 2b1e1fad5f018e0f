//! The virtio-net device: state, the virtio interface, and its event-loop subscriber.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use packet::Direction;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::audit::SWEEP_INTERVAL;
use super::backend::NetBackend;
use super::config::{self, MacAddr};
use super::counters::{inc, NetCounters};
use super::features::{check_dependencies, guest_gso, OFFLOAD_FEATURES, QUEUE_FEATURES};
use super::frame_checks::{ETH_HDR_LEN, VLAN_TAG_LEN};
use super::queue::{QueueIo, Stop};
use super::rx::RxQueue;
use super::stages::Stages;
use super::tx::TxQueue;
use super::{FRAME_BUF_LEN, MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::virtio::split_ring::SplitRing;
use crate::virtio::virtio_device::{ActivateError, Activation, DeviceHealth, VirtioDevice};
use crate::virtio::{feature, VirtioInterrupt};

const EV_STATE: u32 = 0;
const EV_RX_QUEUE: u32 = 1;
const EV_TX_QUEUE: u32 = 2;
const EV_BACKEND: u32 = 3;
const EV_SHAPER_TIMER: u32 = 4;
const EV_AUDIT_TIMER: u32 = 5;

/// Interrupt and queues (which hold guest memory) while the driver has the device running.
struct Active {
    interrupt: Arc<VirtioInterrupt>,
    health: Arc<DeviceHealth>,
    tx: TxQueue,
    rx: RxQueue,
}

/// A virtio-net device on backend `B`.
pub struct NetDevice<B: NetBackend> {
    backend: B,
    stages: Stages,
    /// Wakes a throttled device when its bucket has refilled.
    shaper_timer: TimerFd,
    /// Runs the audit stage's sweep for idle flows.
    audit_timer: TimerFd,
    /// When the armed shaper timer fires, if armed.
    timer_deadline: Option<Instant>,
    config: [u8; config::CONFIG_LEN],
    avail_features: u64,
    acked_features: u64,
    counters: Arc<NetCounters>,
    queue_evts: [EventFd; 2],
    state_evt: EventFd,
    active: Option<Active>,
    backend_interest: EventSet,
}

/// A timerfd whose read fails instead of blocking when it has not expired.
fn nonblocking_timer() -> std::io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    // SAFETY: F_SETFL on a timerfd we own; a stale expiry read then fails instead of
    // blocking the event loop.
    if unsafe { libc::fcntl(timer.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(timer)
}

impl<B: NetBackend> std::fmt::Debug for NetDevice<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetDevice")
            .field("mac", &self.mac())
            .field("active", &self.active.is_some())
            .field("counters", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl<B: NetBackend> NetDevice<B> {
    /// A device with MAC `mac` on `backend`, running `stages` besides the frame checks. When
    /// the backend has an MTU, the device offers VIRTIO_NET_F_MTU with it in config space. It
    /// offers EVENT_IDX and MRG_RXBUF, and the checksum and TSO offloads the backend carries
    /// ([`features`](super::features)).
    ///
    /// # Errors
    /// Creating its eventfds or timers, or asking the backend's MTU, failed.
    pub fn new(backend: B, mac: MacAddr, stages: Stages) -> std::io::Result<Self> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK);
        let mtu = backend.mtu()?.map(|m| u16::try_from(m).unwrap_or(u16::MAX));
        let mut avail_features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_NET_F_MAC)
            | QUEUE_FEATURES
            | (backend.offload_features() & OFFLOAD_FEATURES);
        if mtu.is_some() {
            avail_features |= feature(VIRTIO_NET_F_MTU);
        }
        Ok(Self {
            backend,
            stages,
            shaper_timer: nonblocking_timer()?,
            audit_timer: nonblocking_timer()?,
            timer_deadline: None,
            config: config::config_bytes(mac, mtu),
            avail_features,
            acked_features: 0,
            counters: Arc::new(NetCounters::default()),
            queue_evts: [evt()?, evt()?],
            state_evt: evt()?,
            active: None,
            backend_interest: EventSet::empty(),
        })
    }

    /// The same device without the checksum and segmentation offloads (for comparisons, and
    /// for links where the host should see only plain frames).
    #[must_use]
    pub fn without_offloads(mut self) -> Self {
        self.avail_features &= !OFFLOAD_FEATURES;
        self
    }

    /// Wake up in `wait` (the shaper's answer for a throttled direction): arm the timer if
    /// that is sooner than it is armed for.
    fn arm_shaper_timer(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        if self.timer_deadline.is_some_and(|d| d <= deadline) {
            return;
        }
        // A zero duration would disarm the timer.
        match self
            .shaper_timer
            .reset(wait.max(Duration::from_micros(1)), None)
        {
            Ok(()) => self.timer_deadline = Some(deadline),
            Err(e) => {
                // Without a timer, fall back to the next guest or backend event.
                log::error!("virtio-net: arming the shaper timer: {e}");
                self.unthrottle();
            }
        }
    }

    /// Both directions may ask the shaper again.
    fn unthrottle(&mut self) {
        if let Some(active) = &mut self.active {
            active.tx.throttled = false;
            active.rx.throttled = false;
        }
    }

    /// Run the TX queue, then act on why it stopped.
    fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut io = QueueIo {
            interrupt: &active.interrupt,
            backend: &mut self.backend,
            stages: &mut self.stages,
        };
        let stop = active.tx.process(&mut io);
        self.after(Direction::Tx, stop);
    }

    /// Run the RX queue, then act on why it stopped.
    fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut io = QueueIo {
            interrupt: &active.interrupt,
            backend: &mut self.backend,
            stages: &mut self.stages,
        };
        let stop = active.rx.process(&mut io);
        self.after(Direction::Rx, stop);
    }

    fn after(&mut self, dir: Direction, stop: Stop) {
        match stop {
            Stop::Idle => {}
            Stop::Yield => {
                // Only TX yields; RX is brought back by its backend's readiness.
                let queue = match dir {
                    Direction::Tx => TX_QUEUE,
                    Direction::Rx => RX_QUEUE,
                };
                if let Err(e) = self.queue_evts[queue].write(1) {
                    log::error!("virtio-net: re-kicking {}: {e}", dir.as_str());
                }
            }
            Stop::Throttled(wait) => self.arm_shaper_timer(wait),
            Stop::Broken(why) => {
                if let Some(active) = self.active.take() {
                    inc(&self.counters.needs_reset);
                    let why = format!("virtio-net {} queue: {why}", dir.as_str());
                    active.health.fail(&why, &active.interrupt);
                }
            }
        }
    }

    /// The MAC address in config space.
    pub fn mac(&self) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.config[..6]);
        MacAddr(m)
    }

    /// The device's counters (shared; stays valid after the device is gone).
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// Features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The backend (for tests and diagnostics).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    fn wake_event_loop(&self) {
        if let Err(e) = self.state_evt.write(1) {
            log::error!("virtio-net: waking the event loop: {e}");
        }
    }

    /// Which backend readiness we want to hear about now.
    fn wanted_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if let Some(active) = &self.active {
            if !active.rx.blocked && !active.rx.throttled {
                set |= EventSet::IN;
            }
            if active.tx.blocked && !active.tx.throttled {
                set |= EventSet::OUT;
            }
        }
        set
    }

    fn update_backend_interest(&mut self, ops: &mut EventOps) {
        let wanted = self.wanted_interest();
        if wanted != self.backend_interest {
            match ops.modify(Events::with_data(&self.backend, EV_BACKEND, wanted)) {
                Ok(()) => self.backend_interest = wanted,
                Err(e) => log::error!("virtio-net: updating backend interest: {e:?}"),
            }
        }
    }
}

impl<B: NetBackend> VirtioDevice for NetDevice<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn check_features(&self, features: u64) -> Result<(), String> {
        check_dependencies(features)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::config_space::read_config(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // virtio 1.x: the MAC is read-only unless VIRTIO_NET_F_CTRL_MAC_ADDR (not offered).
        log::debug!(
            "virtio-net: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let Activation {
            mem,
            queues,
            interrupt,
            health,
        } = activation;
        if queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: queues.len(),
            });
        }
        // VIRTIO_RING_F_EVENT_IDX: the rings read used_event and write avail_event.
        let event_idx = self.acked_features & feature(VIRTIO_RING_F_EVENT_IDX) != 0;
        let ring = |index: usize, name: &'static str| {
            SplitRing::new(&queues[index], mem.clone(), event_idx).map_err(|source| {
                ActivateError::Ring {
                    queue: name,
                    source,
                }
            })
        };
        let tx = ring(TX_QUEUE, "TX")?;
        let rx = ring(RX_QUEUE, "RX")?;
        // The link's MTU now (it may have changed since the driver read config space); if the
        // question fails, the one the driver was told.
        let told = u16::from_le_bytes([self.config[10], self.config[11]]);
        let mtu = self.backend.mtu().unwrap_or_else(|e| {
            log::warn!("virtio-net: asking the backend's MTU: {e}; keeping {told}");
            (told > 0).then_some(usize::from(told))
        });
        let features = self.acked_features;
        // The TAP hands us only what the driver takes; if it refuses, the driver gets plain
        // frames (a GSO frame is then segmented by the host) and nothing breaks.
        if let Err(e) = self.backend.set_guest_offloads(features) {
            log::warn!("virtio-net: setting the backend's offloads for {features:#x}: {e}");
        }
        // With MRG_RXBUF, the largest frame RX may deliver (chains are taken for it before a
        // frame is read straight into them).
        let frame_room = VNET_HDR_LEN
            + if guest_gso(features) {
                MAX_FRAME_LEN
            } else {
                // Two VLAN tags: a QinQ frame of a full MTU.
                mtu.unwrap_or(1500).max(1500) + ETH_HDR_LEN + 2 * VLAN_TAG_LEN
            };
        self.active = Some(Active {
            interrupt,
            health,
            tx: TxQueue::new(tx, self.counters.clone(), features, mtu),
            rx: RxQueue::new(
                rx,
                self.counters.clone(),
                features,
                // The driver was told the MTU only if it took VIRTIO_NET_F_MTU.
                (
                    mtu.filter(|_| features & feature(VIRTIO_NET_F_MTU) != 0),
                    frame_room.min(FRAME_BUF_LEN),
                ),
            ),
        });
        self.wake_event_loop();
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut active) = self.active.take() {
            active.tx.release(&self.stages);
            active.rx.release(&self.stages);
        }
        if self.acked_features & OFFLOAD_FEATURES != 0 {
            if let Err(e) = self.backend.set_guest_offloads(0) {
                log::warn!("virtio-net: clearing the backend's offloads: {e}");
            }
        }
        self.acked_features = 0;
        self.wake_event_loop();
    }
}

impl<B: NetBackend> MutEventSubscriber for NetDevice<B> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            EV_STATE => {
                let _ = self.state_evt.read();
                // Freshly activated: handle anything the guest queued before we listened.
                self.process_tx();
                self.process_rx();
            }
            EV_RX_QUEUE => {
                let _ = self.queue_evts[RX_QUEUE].read();
                if let Some(active) = &mut self.active {
                    active.rx.blocked = false;
                }
                self.process_rx();
            }
            EV_TX_QUEUE => {
                let _ = self.queue_evts[TX_QUEUE].read();
                self.process_tx();
            }
            EV_BACKEND => {
                let set = events.event_set();
                if set.contains(EventSet::OUT) {
                    if let Some(active) = &mut self.active {
                        active.tx.blocked = false;
                    }
                    self.process_tx();
                }
                if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    self.process_rx();
                }
            }
            EV_AUDIT_TIMER => {
                let _ = self.audit_timer.wait();
                if let Some(audit) = &mut self.stages.audit {
                    audit.sweep();
                }
            }
            EV_SHAPER_TIMER => {
                let _ = self.shaper_timer.wait();
                self.timer_deadline = None;
                self.unthrottle();
                self.process_tx();
                self.process_rx();
            }
            other => log::error!("virtio-net: unexpected event data {other}"),
        }
        self.update_backend_interest(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let registrations = [
            Events::with_data(&self.state_evt, EV_STATE, EventSet::IN),
            Events::with_data(&self.queue_evts[RX_QUEUE], EV_RX_QUEUE, EventSet::IN),
            Events::with_data(&self.queue_evts[TX_QUEUE], EV_TX_QUEUE, EventSet::IN),
            Events::with_data(&self.backend, EV_BACKEND, EventSet::empty()),
            Events::with_data(&self.shaper_timer, EV_SHAPER_TIMER, EventSet::IN),
            Events::with_data(&self.audit_timer, EV_AUDIT_TIMER, EventSet::IN),
        ];
        if self.stages.audit.is_some() {
            if let Err(e) = self.audit_timer.reset(SWEEP_INTERVAL, Some(SWEEP_INTERVAL)) {
                log::error!("virtio-net: arming the audit timer: {e}");
            }
        }
        for events in registrations {
            if let Err(e) = ops.add(events) {
                log::error!("virtio-net: registering with the event loop: {e:?}");
            }
        }
        self.backend_interest = EventSet::empty();
        self.update_backend_interest(ops);
    }
}
