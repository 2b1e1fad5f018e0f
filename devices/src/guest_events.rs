//! Events a device reports about the guest as a whole (it reset, it panicked, it booted).

/// Something a device saw that concerns the whole VM rather than the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    /// The guest asked for a reset (i8042 pulse): for a sliver this means "powered off".
    Reset,
    /// The guest kernel reported a panic; the line it printed.
    Panic(String),
    /// The guest wrote the boot-timer marker: its first instruction ran.
    BootMarker,
}

/// Where devices report [`GuestEvent`]s. The VMM implements it.
pub trait GuestEventSink: Send + Sync {
    /// Report an event. Must not block for long: it is called from a vCPU exit.
    fn notify(&self, event: GuestEvent);
}

#[cfg(test)]
pub(crate) mod recording_sink {
    use std::sync::Mutex;

    use super::{GuestEvent, GuestEventSink};

    /// Records every event, for assertions.
    #[derive(Debug, Default)]
    pub struct RecordingSink(pub Mutex<Vec<GuestEvent>>);

    impl GuestEventSink for RecordingSink {
        fn notify(&self, event: GuestEvent) {
            self.0.lock().expect("sink lock").push(event);
        }
    }

    impl RecordingSink {
        pub fn events(&self) -> Vec<GuestEvent> {
            self.0.lock().expect("sink lock").clone()
        }
    }
}
