//! The interface between a device and the VMM's port-I/O and MMIO buses.

/// A device that owns a range of a bus. `offset` is relative to the start of that range.
///
/// Accesses come straight from guest exits: a device must accept any offset inside its range
/// and any access size, and answer reads it does not understand with a defined value.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}
