//! The VMM's main-thread event loop (event-manager): the exit eventfd, stop signals, and the
//! host console feeding the guest's serial port.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use devices::legacy::SerialDevice;
use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::exit::{ExitReason, ExitSignal};

/// The subscriber type of our event manager.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Errors setting up the loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll setup failed.
    #[error("creating the event loop: {0}")]
    Create(event_manager::Error),
    /// Signal handler registration failed.
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, std::io::Error),
}

/// Wakes the loop when a vCPU or device reports an exit.
struct ExitWatcher(Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The count does not matter; `ExitSignal` holds the reason. A failed read (EAGAIN)
        // only means another wake-up already drained it.
        let _ = self.0.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.0.eventfd(), EventSet::IN)) {
            log::error!("watching the exit eventfd: {e:?}");
        }
    }
}

/// SIGINT / SIGTERM become an orderly stop.
struct SignalWatcher {
    pipes: Vec<(UnixStream, &'static str)>,
    exit: Arc<ExitSignal>,
}

impl MutEventSubscriber for SignalWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        for (pipe, name) in &mut self.pipes {
            if pipe.as_raw_fd() == events.fd() {
                let mut buf = [0u8; 16];
                let _ = pipe.read(&mut buf);
                log::info!("{name} received: stopping the VM");
                self.exit.report(ExitReason::Signal(name));
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (pipe, name) in &self.pipes {
            if let Err(e) = ops.add(Events::new(pipe, EventSet::IN)) {
                log::error!("watching {name}: {e:?}");
            }
        }
    }
}

/// What the VMM types on the guest console to ask for an orderly power-off; the project's
/// guest `/init` watches for it (see guest-kernel/init.sh).
pub const GUEST_POWEROFF_REQUEST: &[u8] = b"\n@@SLIVER-POWEROFF@@\n";

/// SIGUSR1: ask the guest to power off, through its console.
struct PowerOffRequest<W: std::io::Write + Send + 'static> {
    pipe: UnixStream,
    serial: Arc<Mutex<SerialDevice<W>>>,
}

impl<W: std::io::Write + Send + 'static> MutEventSubscriber for PowerOffRequest<W> {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let mut buf = [0u8; 16];
        let _ = self.pipe.read(&mut buf);
        log::info!("SIGUSR1 received: asking the guest to power off");
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = serial.enqueue_input(GUEST_POWEROFF_REQUEST) {
            log::warn!("asking the guest to power off: {e}");
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.pipe, EventSet::IN)) {
            log::error!("watching SIGUSR1: {e:?}");
        }
    }
}

/// Host stdin to the guest's COM1.
struct ConsoleInput<W: std::io::Write + Send + 'static> {
    serial: Arc<Mutex<SerialDevice<W>>>,
}

const STDIN: RawFd = libc::STDIN_FILENO;

impl<W: std::io::Write + Send + 'static> MutEventSubscriber for ConsoleInput<W> {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: reading into a valid stack buffer of the given length from stdin.
        let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            // EOF or error: stop watching stdin, the guest keeps running.
            let _ = ops.remove(Events::new_raw(STDIN, EventSet::IN));
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        match serial.enqueue_input(&buf[..n as usize]) {
            Ok(taken) if taken < n as usize => {
                log::debug!(
                    "serial FIFO full: {} input bytes dropped",
                    n as usize - taken
                )
            }
            Ok(_) => {}
            Err(e) => log::debug!("serial input: {e}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        // A regular file or /dev/null cannot be polled: then there is simply no console input.
        if let Err(e) = ops.add(Events::new_raw(STDIN, EventSet::IN)) {
            log::debug!("not forwarding stdin to the guest console: {e:?}");
        }
    }
}

/// Unblock `signals` for this thread (and the threads it starts later). Call it only once
/// their handlers are installed.
pub fn unblock_signals(signals: &[libc::c_int]) {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// The main-thread loop.
pub struct EventLoop {
    manager: EventManager<Subscriber>,
    exit: Arc<ExitSignal>,
    signal_ids: Vec<signal_hook::SigId>,
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        for id in self.signal_ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

impl EventLoop {
    /// A loop that watches `exit` and the stop signals.
    pub fn new(exit: Arc<ExitSignal>) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new().map_err(EventLoopError::Create)?;
        manager.add_subscriber(Box::new(ExitWatcher(exit.clone())));
        let mut pipes = Vec::new();
        let mut signal_ids = Vec::new();
        for (sig, name) in [(libc::SIGINT, "SIGINT"), (libc::SIGTERM, "SIGTERM")] {
            let (read, write) = UnixStream::pair().map_err(|e| EventLoopError::Signal(name, e))?;
            read.set_nonblocking(true)
                .map_err(|e| EventLoopError::Signal(name, e))?;
            let id = signal_hook::low_level::pipe::register(sig, write)
                .map_err(|e| EventLoopError::Signal(name, e))?;
            signal_ids.push(id);
            pipes.push((read, name));
        }
        manager.add_subscriber(Box::new(SignalWatcher {
            pipes,
            exit: exit.clone(),
        }));
        // A supervisor may start us with SIGTERM/SIGINT blocked so that a stop request
        // during start-up is not lost; now that they are handled, let them in (a pending
        // one is delivered at once and becomes an orderly stop).
        unblock_signals(&[libc::SIGTERM, libc::SIGINT]);
        Ok(Self {
            manager,
            exit,
            signal_ids,
        })
    }

    /// Forward host stdin to `serial`, and turn SIGUSR1 into a power-off request typed there.
    pub fn add_console_input<W: std::io::Write + Send + 'static>(
        &mut self,
        serial: Arc<Mutex<SerialDevice<W>>>,
    ) -> Result<(), EventLoopError> {
        let (read, write) = UnixStream::pair().map_err(|e| EventLoopError::Signal("SIGUSR1", e))?;
        read.set_nonblocking(true)
            .map_err(|e| EventLoopError::Signal("SIGUSR1", e))?;
        let id = signal_hook::low_level::pipe::register(libc::SIGUSR1, write)
            .map_err(|e| EventLoopError::Signal("SIGUSR1", e))?;
        self.signal_ids.push(id);
        self.manager.add_subscriber(Box::new(PowerOffRequest {
            pipe: read,
            serial: serial.clone(),
        }));
        self.manager
            .add_subscriber(Box::new(ConsoleInput { serial }));
        unblock_signals(&[libc::SIGUSR1]);
        Ok(())
    }

    /// Add another subscriber (devices with their own fds).
    pub fn add_subscriber(&mut self, subscriber: Subscriber) {
        self.manager.add_subscriber(subscriber);
    }

    /// Dispatch events until an exit is reported.
    pub fn run_until_exit(&mut self) {
        while !self.exit.is_stopping() {
            if let Err(e) = self.manager.run() {
                log::error!("event loop: {e:?}");
                self.exit
                    .report(ExitReason::Vmm(format!("event loop failed: {e:?}")));
            }
        }
    }
}
