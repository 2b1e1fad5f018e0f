//! A one-port marker device: the guest writes [`MAGIC`] to say "my first instruction ran", and
//! the VMM takes its start-up measurements at that moment.

use std::sync::Arc;

use crate::bus_device::BusDevice;
use crate::guest_events::{GuestEvent, GuestEventSink};

/// The byte a guest writes to report it is running.
pub const MAGIC: u8 = 123;

/// The marker port.
pub struct BootTimer {
    sink: Arc<dyn GuestEventSink>,
}

impl BootTimer {
    /// A marker that reports to `sink`.
    pub fn new(sink: Arc<dyn GuestEventSink>) -> Self {
        Self { sink }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&MAGIC) {
            self.sink.notify(GuestEvent::BootMarker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_events::recording_sink::RecordingSink;

    #[test]
    fn only_the_magic_byte_marks_boot() {
        let sink = Arc::new(RecordingSink::default());
        let mut dev = BootTimer::new(sink.clone());
        dev.write(0, &[1]);
        dev.write(1, &[MAGIC]);
        assert!(sink.events().is_empty());
        dev.write(0, &[MAGIC]);
        assert_eq!(sink.events(), vec![GuestEvent::BootMarker]);
    }
}
