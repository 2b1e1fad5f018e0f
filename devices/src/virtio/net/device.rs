//! The virtio-net device: state, the virtio interface, and its event-loop subscriber.

use std::num::Wrapping;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::backend::NetBackend;
use super::chain::IovecBuf;
use super::config::{self, MacAddr};
use super::counters::{inc, NetCounters};
use super::policy::PacketPolicy;
use super::shaper::{Direction, Shaper};
use super::tx::HEAD_LEN;
use super::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::virtio::device::{ActivateError, Activation, DeviceHealth, VirtioDevice};
use crate::virtio::{feature, VirtioInterrupt};

const EV_STATE: u32 = 0;
const EV_RX_QUEUE: u32 = 1;
const EV_TX_QUEUE: u32 = 2;
const EV_BACKEND: u32 = 3;
const EV_SHAPER_TIMER: u32 = 4;
const EV_POLICY_TIMER: u32 = 5;

/// Queues and memory while the driver has the device running.
pub(super) struct Active {
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx: Queue,
    pub(super) tx: Queue,
    pub(super) interrupt: Arc<VirtioInterrupt>,
    health: Arc<DeviceHealth>,
}

impl Active {
    /// Give up on the driver's rings until it resets the device.
    pub(super) fn fail(&self, why: &str, counters: &NetCounters) {
        inc(&counters.needs_reset);
        self.health.fail(why, &self.interrupt);
    }

    /// Whether the available index moved further than a ring can hold (a driver bug or an
    /// attack); then nothing in the ring can be trusted.
    pub(super) fn avail_index_invalid(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
        match queue.avail_idx(mem, Ordering::Acquire) {
            Ok(idx) => (idx - Wrapping(queue.next_avail())).0 > queue.size(),
            Err(_) => true,
        }
    }
}

/// A virtio-net device on backend `B`.
pub struct NetDevice<B: NetBackend> {
    pub(super) backend: B,
    pub(super) policy: Box<dyn PacketPolicy>,
    /// The shaper stage (none: no limits).
    pub(super) shaper: Option<Arc<Shaper>>,
    /// Wakes a throttled device when its bucket has refilled.
    shaper_timer: TimerFd,
    /// Runs the policy's periodic housekeeping.
    policy_timer: TimerFd,
    /// When the armed shaper timer fires, if armed.
    timer_deadline: Option<Instant>,
    /// Out of TX tokens: chains wait in the ring until the shaper timer.
    pub(super) tx_throttled: bool,
    /// Out of RX tokens: frames wait in the backend until the shaper timer.
    pub(super) rx_throttled: bool,
    config: [u8; 8],
    avail_features: u64,
    acked_features: u64,
    pub(super) counters: Arc<NetCounters>,
    pub(super) queue_evts: [EventFd; 2],
    state_evt: EventFd,
    pub(super) active: Option<Active>,
    /// The first bytes of the TX frame being sent (see `tx.rs`).
    pub(super) tx_head: Box<[u8; HEAD_LEN]>,
    /// Where the rest of that frame is in guest memory.
    pub(super) tx_iovs: IovecBuf,
    /// The first bytes of the RX frame being received (see `rx.rs`).
    pub(super) rx_head: Box<[u8; HEAD_LEN]>,
    /// Catches the first byte of a frame longer than the guest's buffer.
    pub(super) rx_spare: [u8; 1],
    /// Where the rest of that frame goes in guest memory.
    pub(super) rx_iovs: IovecBuf,
    /// No guest RX buffer: stop reading the backend until the guest kicks RX.
    pub(super) rx_blocked: bool,
    /// The backend would block: wait for it to become writable.
    pub(super) tx_blocked: bool,
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
    /// A device with MAC `mac` on `backend`, deciding per frame with `policy`.
    pub fn new(backend: B, mac: MacAddr, policy: Box<dyn PacketPolicy>) -> std::io::Result<Self> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK);
        let shaper_timer = nonblocking_timer()?;
        let policy_timer = nonblocking_timer()?;
        Ok(Self {
            backend,
            policy,
            shaper: None,
            shaper_timer,
            policy_timer,
            timer_deadline: None,
            tx_throttled: false,
            rx_throttled: false,
            config: config::config_bytes(mac),
            avail_features: feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MAC),
            acked_features: 0,
            counters: Arc::new(NetCounters::default()),
            queue_evts: [evt()?, evt()?],
            state_evt: evt()?,
            active: None,
            tx_head: Box::new([0u8; HEAD_LEN]),
            tx_iovs: IovecBuf::with_capacity(usize::from(QUEUE_SIZE)),
            rx_head: Box::new([0u8; HEAD_LEN]),
            rx_spare: [0u8; 1],
            rx_iovs: IovecBuf::with_capacity(usize::from(QUEUE_SIZE)),
            rx_blocked: false,
            tx_blocked: false,
            backend_interest: EventSet::empty(),
        })
    }

    /// Put the shaper stage `shaper` (shared by the sliver's NICs) into both pipelines.
    pub fn set_shaper(&mut self, shaper: Arc<Shaper>) {
        self.shaper = Some(shaper);
    }

    /// Stop direction `dir` for `wait` (the shaper's answer): arm the timer if that is
    /// sooner than it is armed for.
    pub(super) fn throttle(&mut self, dir: Direction, wait: Duration) {
        match dir {
            Direction::Tx => self.tx_throttled = true,
            Direction::Rx => self.rx_throttled = true,
        }
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
                self.tx_throttled = false;
                self.rx_throttled = false;
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
        if self.active.is_some() {
            if !self.rx_blocked && !self.rx_throttled {
                set |= EventSet::IN;
            }
            if self.tx_blocked && !self.tx_throttled {
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

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        config::read_config(&self.config, offset, data);
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
            mut queues,
            interrupt,
            health,
        } = activation;
        if queues.len() != 2 {
            return Err(ActivateError::QueueCount {
                expected: 2,
                got: queues.len(),
            });
        }
        let tx = queues.remove(TX_QUEUE);
        let rx = queues.remove(RX_QUEUE);
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
            health,
        });
        self.rx_blocked = false;
        self.tx_blocked = false;
        self.tx_throttled = false;
        self.rx_throttled = false;
        self.wake_event_loop();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.rx_blocked = false;
        self.tx_blocked = false;
        self.tx_throttled = false;
        self.rx_throttled = false;
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
                self.rx_blocked = false;
                self.process_rx();
            }
            EV_TX_QUEUE => {
                let _ = self.queue_evts[TX_QUEUE].read();
                self.process_tx();
            }
            EV_BACKEND => {
                let set = events.event_set();
                if set.contains(EventSet::OUT) {
                    self.tx_blocked = false;
                    self.process_tx();
                }
                if set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP) {
                    self.process_rx();
                }
            }
            EV_POLICY_TIMER => {
                let _ = self.policy_timer.wait();
                self.policy.tick();
            }
            EV_SHAPER_TIMER => {
                let _ = self.shaper_timer.wait();
                self.timer_deadline = None;
                self.tx_throttled = false;
                self.rx_throttled = false;
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
            Events::with_data(&self.policy_timer, EV_POLICY_TIMER, EventSet::IN),
        ];
        if let Some(every) = self.policy.tick_interval() {
            if let Err(e) = self.policy_timer.reset(every, Some(every)) {
                log::error!("virtio-net: arming the policy timer: {e}");
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
