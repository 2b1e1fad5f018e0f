//! How a device raises its interrupt line without knowing about KVM.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// An edge-triggered interrupt line of one device.
pub trait Interrupt: Send + Sync {
    /// Raise the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

/// An interrupt delivered by writing an eventfd; the VMM binds the eventfd to a GSI (irqfd).
#[derive(Debug)]
pub struct EventFdInterrupt {
    evt: EventFd,
}

impl EventFdInterrupt {
    /// A new line with its own non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Self {
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd the VMM registers with the hypervisor.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

impl Interrupt for EventFdInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.evt.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_counts_on_the_eventfd() {
        let irq = EventFdInterrupt::new().expect("eventfd");
        irq.trigger().expect("trigger");
        irq.trigger().expect("trigger");
        assert_eq!(irq.eventfd().read().expect("read"), 2);
    }
}
