//! COM1: a 16550A UART (vm-superio) whose output goes to the VMM's console and is watched for
//! a guest kernel panic.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::{serial::NoEvents, Serial, Trigger};

use crate::bus_device::BusDevice;
use crate::guest_events::{GuestEvent, GuestEventSink};
use crate::interrupt::Interrupt;

/// What Linux prints first when it panics.
const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// Longest line kept for panic detection; the rest of a longer line is not inspected.
const MAX_LINE: usize = 512;

/// Adapts the device-neutral [`Interrupt`] to vm-superio's trigger.
struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// Passes guest console output through unchanged, flushing each write so a prompt without a
/// newline shows at once, and reports a kernel panic line to the sink.
pub struct ConsoleWriter<W: Write> {
    out: W,
    line: Vec<u8>,
    sink: Arc<dyn GuestEventSink>,
}

impl<W: Write> ConsoleWriter<W> {
    /// Wrap `out`; panics seen in the output go to `sink`.
    pub fn new(out: W, sink: Arc<dyn GuestEventSink>) -> Self {
        Self {
            out,
            line: Vec::with_capacity(MAX_LINE),
            sink,
        }
    }

    /// The wrapped writer.
    pub fn inner(&self) -> &W {
        &self.out
    }

    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.end_line();
            } else if b != b'\r' && self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        let text = String::from_utf8_lossy(&self.line);
        if let Some(pos) = text.find(PANIC_MARKER) {
            self.sink
                .notify(GuestEvent::Panic(text[pos..].trim_end().to_string()));
        }
        self.line.clear();
    }
}

impl<W: Write> Write for ConsoleWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        // The console is best effort: a closed stdout must not stop the guest.
        if self
            .out
            .write_all(buf)
            .and_then(|()| self.out.flush())
            .is_err()
        {
            log::debug!("console output lost ({} bytes)", buf.len());
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The UART on the port-I/O bus (8 registers at COM1, 0x3f8).
pub struct SerialDevice<W: Write + Send> {
    uart: Serial<IrqTrigger, NoEvents, ConsoleWriter<W>>,
}

impl<W: Write + Send> SerialDevice<W> {
    /// A UART that raises `irq` and writes to `out`.
    pub fn new(irq: Arc<dyn Interrupt>, out: ConsoleWriter<W>) -> Self {
        Self {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }

    /// Queue bytes typed on the host for the guest; returns how many fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.uart
            .enqueue_raw_bytes(bytes)
            .map_err(|e| io::Error::other(format!("serial input: {e:?}")))
    }

    /// The console writer (for tests and diagnostics).
    pub fn writer(&self) -> &ConsoleWriter<W> {
        self.uart.writer()
    }
}

impl<W: Write + Send> BusDevice for SerialDevice<W> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(reg)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(reg)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.uart.write(reg, value) {
            log::warn!("serial: write to register {reg}: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_events::recording_sink::RecordingSink;
    use crate::interrupt::EventFdInterrupt;

    const THR: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    fn device() -> (
        SerialDevice<Vec<u8>>,
        Arc<EventFdInterrupt>,
        Arc<RecordingSink>,
    ) {
        let sink = Arc::new(RecordingSink::default());
        let irq = Arc::new(EventFdInterrupt::new().expect("eventfd"));
        let writer = ConsoleWriter::new(Vec::new(), sink.clone());
        (SerialDevice::new(irq.clone(), writer), irq, sink)
    }

    fn type_str(dev: &mut SerialDevice<Vec<u8>>, s: &str) {
        for b in s.bytes() {
            dev.write(THR, &[b]);
        }
    }

    #[test]
    fn guest_output_reaches_the_console() {
        let (mut dev, _irq, sink) = device();
        type_str(&mut dev, "hello\n");
        assert_eq!(dev.writer().inner().as_slice(), b"hello\n");
        assert!(sink.events().is_empty());
    }

    #[test]
    fn kernel_panic_line_is_reported_once_the_line_ends() {
        let (mut dev, _irq, sink) = device();
        type_str(
            &mut dev,
            "[    3.1] Kernel panic - not syncing: Attempted to kill init!",
        );
        assert!(sink.events().is_empty(), "reported before the line ended");
        type_str(&mut dev, "\r\n");
        assert_eq!(
            sink.events(),
            vec![GuestEvent::Panic(
                "Kernel panic - not syncing: Attempted to kill init!".into()
            )]
        );
    }

    #[test]
    fn input_raises_the_interrupt_when_enabled() {
        let (mut dev, irq, _sink) = device();
        dev.write(IER, &[0x01]); // received-data-available interrupt
        assert_eq!(dev.enqueue_input(b"ab").expect("enqueue"), 2);
        assert!(irq.eventfd().read().expect("irq") >= 1);
        let mut lsr = [0u8];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 0x01, 0x01, "data-ready bit");
        let mut rbr = [0u8];
        dev.read(THR, &mut rbr);
        assert_eq!(rbr[0], b'a');
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let (mut dev, _irq, _sink) = device();
        dev.write(300, &[1]);
        dev.write(0, &[]);
        let mut wide = [0xffu8; 4];
        dev.read(7, &mut wide);
        let mut empty: [u8; 0] = [];
        dev.read(0, &mut empty);
    }
}
