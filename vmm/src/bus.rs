//! Port-I/O and MMIO buses: address ranges mapped to devices.

use std::sync::{Arc, Mutex};

use devices::BusDevice;

/// A shared device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors building a bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// Empty or wrapping range.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

struct Range {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// Ranges sorted by base; built before the vCPUs start, then only read.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<Range>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.ranges.iter().map(|r| (r.base, r.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `device` at `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::BadRange { base, len })?;
        let idx = self.ranges.partition_point(|r| r.base < base);
        let overlaps_prev = idx > 0 && self.ranges[idx - 1].base + self.ranges[idx - 1].len > base;
        let overlaps_next = self.ranges.get(idx).is_some_and(|r| r.base < end);
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        self.ranges.insert(idx, Range { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(&SharedDevice, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let r = &self.ranges[idx];
        let offset = addr - r.base;
        (offset.checked_add(size as u64)? <= r.len).then_some((&r.device, offset))
    }

    /// Dispatch a read; `false` if no device covers the access (the data is then all ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatch a write; `false` if no device covers the access (the write is dropped).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((dev, offset)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Lock a device, recovering from a poisoned lock: one panicking access must not take the
/// whole VM down with it.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(u64, Vec<u8>)>);

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    fn dev() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatch_by_range_with_offsets() {
        let mut bus = Bus::new();
        let a = dev();
        let b = dev();
        bus.insert(0x3f8, 8, a.clone()).expect("a");
        bus.insert(0x60, 5, b.clone()).expect("b");
        assert!(bus.write(0x3f9, &[1]));
        assert!(bus.write(0x64, &[0xfe]));
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d[0], 5);
        assert_eq!(a.lock().expect("a").0, vec![(1, vec![1])]);
        assert_eq!(b.lock().expect("b").0, vec![(4, vec![0xfe])]);
    }

    #[test]
    fn unmapped_reads_all_ones_and_straddling_access_misses() {
        let mut bus = Bus::new();
        bus.insert(0x100, 4, dev()).expect("dev");
        let mut d = [0u8; 2];
        assert!(!bus.read(0x50, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        assert!(!bus.read(0x103, &mut d), "access past the range end");
        assert!(!bus.write(0x104, &[0]));
    }

    #[test]
    fn overlaps_and_bad_ranges_are_refused() {
        let mut bus = Bus::new();
        bus.insert(0x100, 0x10, dev()).expect("first");
        assert!(matches!(
            bus.insert(0x10f, 1, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0xf0, 0x11, dev()),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(0x0, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
        bus.insert(0x110, 1, dev()).expect("adjacent is fine");
        bus.insert(0xf0, 0x10, dev())
            .expect("adjacent below is fine");
    }
}
