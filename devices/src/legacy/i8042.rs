//! Just enough of the i8042 keyboard controller for Linux's `reboot=k`: the CPU-reset pulse
//! (command 0xFE on the command port) is reported as [`GuestEvent::Reset`].

use std::sync::Arc;

use crate::bus_device::BusDevice;
use crate::guest_events::{GuestEvent, GuestEventSink};

/// Offset of the command/status port (0x64) from the data port (0x60).
pub const COMMAND_OFFSET: u64 = 4;
/// Number of ports the device spans (0x60..=0x64).
pub const PORT_COUNT: u64 = 5;
const CMD_RESET_CPU: u8 = 0xfe;

/// The controller. Status reads report "input buffer empty" so the guest's wait loop ends.
pub struct I8042 {
    sink: Arc<dyn GuestEventSink>,
}

impl I8042 {
    /// A controller that reports resets to `sink`.
    pub fn new(sink: Arc<dyn GuestEventSink>) -> Self {
        Self { sink }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: no input pending, output buffer empty; data port reads 0.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.sink.notify(GuestEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_events::recording_sink::RecordingSink;

    #[test]
    fn reset_command_reports_reset() {
        let sink = Arc::new(RecordingSink::default());
        let mut dev = I8042::new(sink.clone());
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & 0x02, 0, "input buffer must look empty");
        dev.write(0, &[CMD_RESET_CPU]); // data port: not a reset
        dev.write(COMMAND_OFFSET, &[0xd1]); // another command: ignored
        assert!(sink.events().is_empty());
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(sink.events(), vec![GuestEvent::Reset]);
    }
}
