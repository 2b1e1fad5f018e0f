//! An initialised virtio-blk device (a 64 KiB disk, every feature accepted; read-only for
//! inputs of odd length) whose descriptor table, avail ring, request headers and buffers are
//! arbitrary bytes: every request must get a status or be dropped, never a panic, a hang or
//! a write outside the disk.
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use devices::virtio::block::{BlockDevice, Disk, QUEUE_SIZE};
use devices::virtio::test_utils::{GuestDriver, RawDesc, SCRATCH};
use event_manager::{EventManager, SubscriberOps};
use libfuzzer_sys::fuzz_target;

type Dev = Arc<Mutex<BlockDevice>>;

const Q: u16 = 0;
const DISK_BYTES: u64 = 64 * 1024;

/// One disk file for the whole run (each input opens it anew).
fn disk_path() -> &'static std::path::Path {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("blk_chain-{}.img", std::process::id()));
        let f = std::fs::File::create(&path).expect("disk file");
        f.set_len(DISK_BYTES).expect("size");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let read_only = data.len() % 2 == 1;
    let disk = Disk::open(disk_path(), read_only, None).expect("disk");
    let dev: Dev = Arc::new(Mutex::new(BlockDevice::new(disk).expect("device")));
    let mut em = EventManager::<Dev>::new().expect("event manager");
    em.add_subscriber(dev.clone());
    let mut driver = GuestDriver::new(dev.clone());
    let features = driver.device_features();
    driver.init(features, 1, QUEUE_SIZE);
    // Descriptors: 16 bytes each, pointing mostly into a scratch area so chains are valid
    // often; the rest of the input is what the buffers hold (request headers included).
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
        driver.write_desc(Q, i as u16, desc);
        heads.push(u16::from(d[14]));
    }
    driver.mem_write(SCRATCH, chunks.remainder());
    for head in heads.iter().take(64) {
        driver.publish(Q, *head);
    }
    driver.kick(Q);
    for _ in 0..16 {
        if em.run_with_timeout(0).expect("event loop") == 0 {
            break;
        }
    }
    let len = std::fs::metadata(disk_path()).expect("disk").len();
    assert_eq!(len, DISK_BYTES, "the disk never grows");
});
