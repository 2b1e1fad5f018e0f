//! An initialised virtio-net device whose TX descriptor table, avail ring and buffers are
//! arbitrary bytes: the TX pipeline must drop or send chains, never panic or hang. The input's
//! length chooses whether anti-spoofing and the audit run (odd) or not (even), and whether
//! the backend reports a 1 500-byte MTU (bit 1) and the buffers start with a frame shaped
//! from the input (bit 2): a virtio header with offload fields, the device's MAC, a stack of
//! VLAN tags and an EtherType the stages know, so that tagged, GSO and oversize frames reach
//! the stages behind the chain checks. `fuzz/tx_chain.dict` holds the same values.
#![no_main]

use devices::virtio::net::QUEUE_SIZE;
use devices::virtio::test_utils::{GuestDriver, RawDesc, SCRATCH};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

#[path = "common.rs"]
mod common;

const TX: u16 = 1;

fuzz_target!(|data: &[u8]| {
    let mut rig = common::Rig::new(data.len() % 2 == 1, (data.len() >> 1) % 2 == 1);
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
    let rest = chunks.remainder();
    if (data.len() >> 2) % 2 == 1 {
        rig.driver
            .mem_write(SCRATCH, &common::shaped_frame(rest, rig.mac));
    } else {
        rig.driver.mem_write(SCRATCH, rest);
    }
    for head in heads.iter().take(64) {
        rig.driver.publish(TX, *head);
    }
    rig.driver.kick(TX);
    rig.pump();
    let _ = GuestDriver::slot_addr(TX, 0);
});
