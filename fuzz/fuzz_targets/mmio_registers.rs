//! Arbitrary register reads and writes (any offset, any width) against the virtio-mmio
//! transport of a virtio-net device. The transport must never panic.
#![no_main]

use devices::BusDevice;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let mut rig = common::Rig::new(true, false);
    for op in data.chunks(8) {
        if op.len() < 3 {
            break;
        }
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x200);
        let width = [1usize, 2, 4, 8][usize::from(op[0] >> 1) % 4];
        let mut bytes = [0u8; 8];
        let payload = &op[3..];
        bytes[..payload.len().min(8)].copy_from_slice(&payload[..payload.len().min(8)]);
        if op[0] & 1 == 0 {
            rig.driver.transport.read(offset, &mut bytes[..width]);
        } else {
            rig.driver.transport.write(offset, &bytes[..width]);
        }
        if op[0] & 0x80 != 0 {
            rig.pump();
        }
    }
    rig.pump();
});
