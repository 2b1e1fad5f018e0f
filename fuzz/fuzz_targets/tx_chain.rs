//! An initialised virtio-net device whose TX descriptor table, avail ring and buffers are
//! arbitrary bytes: the TX pipeline must drop or send chains, never panic or hang. The input's
//! length chooses whether anti-spoofing and the audit run (odd) or not (even).
#![no_main]

use devices::virtio::net::QUEUE_SIZE;
use devices::virtio::test_utils::{GuestDriver, RawDesc, SCRATCH};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

#[path = "common.rs"]
mod common;

const TX: u16 = 1;

fuzz_target!(|data: &[u8]| {
    let mut rig = common::Rig::new(data.len() % 2 == 1);
    rig.driver.init(1 << VIRTIO_F_VERSION_1, 2, QUEUE_SIZE);
    rig.pump();
    // Descriptors: 16 bytes each, pointing mostly into a scratch area so chains are valid often.
    let mut chunks = data.chunks_exact(16);
    let mut heads = Vec::new();
    for (i, d) in (&mut chunks).take(usize::from(QUEUE_SIZE)).enumerate() {
        let raw = u64::from_le_bytes(d[0..8].try_into().expect("8"));
        let addr = if d[15] & 0x80 == 0 {
            SCRATCH + (raw % 0x10000)
        } else {
            raw
        };
        let desc = RawDesc {
            addr,
            len: u32::from_le_bytes(d[8..12].try_into().expect("4")) % 0x20000,
            flags: u16::from(d[12]) & 0x7,
            next: u16::from_le_bytes([d[13], d[14] & 0x1]),
        };
        rig.driver.write_desc(TX, i as u16, desc);
        heads.push(u16::from(d[14]));
    }
    rig.driver.mem_write(SCRATCH, chunks.remainder());
    for head in heads.iter().take(64) {
        rig.driver.publish(TX, *head);
    }
    rig.driver.kick(TX);
    rig.pump();
    let _ = GuestDriver::slot_addr(TX, 0);
});
