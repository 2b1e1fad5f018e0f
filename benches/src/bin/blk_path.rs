//! virtio-blk through the guest-driver harness against `pread`/`pwrite` on the same file,
//! side by side in one run: 4 KiB random reads and writes (IOPS, 64 requests in flight for
//! the device, one call at a time for the raw loop) and 1 MiB sequential reads and writes
//! (MB/s, 8 in flight). The file is on the file system of `--dir` (default: the current
//! directory's), 256 MiB, written once before the runs, so reads come from the page cache
//! for both; writes go to the page cache (no flush), as the guest's would between flushes.
//!
//! Run: `cargo build --release -p benches && target/release/blk_path [SECONDS] [DIR] [LOAD]`

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::virtio::block::{BlockDevice, Disk, QUEUE_SIZE};
use devices::virtio::test_utils::{GuestDriver, RawDesc, SCRATCH};
use event_manager::{EventManager, SubscriberOps};

type Dev = Arc<Mutex<BlockDevice>>;

const FILE_BYTES: u64 = 256 << 20;
const Q: u16 = 0;
/// virtio 1.2: VIRTIO_F_VERSION_1 (32), VIRTIO_BLK_F_FLUSH (9); VIRTIO_BLK_T_IN 0, OUT 1.
const FEATURES: u64 = (1 << 32) | (1 << 9);
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// One workload: request size and how many the device gets in flight.
#[derive(Clone, Copy)]
struct Load {
    name: &'static str,
    bytes: usize,
    in_flight: usize,
    write: bool,
    random: bool,
}

struct Rig {
    driver: GuestDriver,
    em: EventManager<Dev>,
}

impl Rig {
    fn new(path: &std::path::Path) -> Self {
        let disk = Disk::open(path, false, None).expect("disk");
        let dev: Dev = Arc::new(Mutex::new(BlockDevice::new(disk).expect("device")));
        let mut em = EventManager::<Dev>::new().expect("event manager");
        em.add_subscriber(dev.clone());
        let mut driver = GuestDriver::new(dev);
        driver.init(FEATURES, 1, QUEUE_SIZE);
        while em.run_with_timeout(0).expect("loop") > 0 {}
        Self { driver, em }
    }

    /// Lay out `load.in_flight` request chains (header, data, status) once; slot `i` uses
    /// descriptors 3i..3i+2 and the i-th data buffer in the scratch area.
    fn lay_out(&mut self, load: Load) {
        for i in 0..load.in_flight {
            let base = SCRATCH + (i as u64) * 64;
            let data = SCRATCH + 0x10_0000 + (i * load.bytes) as u64;
            let d = (i * 3) as u16;
            let data_flags = NEXT | if load.write { 0 } else { WRITE };
            let descs = [
                (base, 16, NEXT),
                (data, load.bytes as u32, data_flags),
                (base + 32, 1, WRITE),
            ];
            for (k, (addr, len, flags)) in descs.into_iter().enumerate() {
                let next = if k < 2 { d + k as u16 + 1 } else { 0 };
                self.driver.write_desc(
                    Q,
                    d + k as u16,
                    RawDesc {
                        addr,
                        len,
                        flags,
                        next,
                    },
                );
            }
        }
    }

    /// One batch: a header per slot at `offsets` (written at once), publish them with one
    /// index update, kick, wait for every answer.
    fn batch(&mut self, load: Load, offsets: &[u64], headers: &mut [u8], heads: &[u16]) {
        let kind = if load.write { T_OUT } else { T_IN };
        for (i, off) in offsets.iter().enumerate() {
            let h = &mut headers[i * 64..i * 64 + 16];
            h[..4].copy_from_slice(&kind.to_le_bytes());
            h[8..].copy_from_slice(&(off / 512).to_le_bytes());
        }
        self.driver
            .mem_write(SCRATCH, &headers[..offsets.len() * 64]);
        self.driver.publish_many(Q, &heads[..offsets.len()]);
        self.driver.kick(Q);
        let mut done = 0usize;
        while done < offsets.len() {
            self.em.run_with_timeout(100).expect("loop");
            done += usize::from(self.driver.count_used(Q));
        }
    }
}

/// A cheap deterministic random offset, aligned to `align`, for a request of `len` bytes.
fn next_offset(state: &mut u64, align: u64, len: u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % ((FILE_BYTES - len) / align)) * align
}

/// Requests per second for `secs` seconds of `load` through the device.
fn device_run(rig: &mut Rig, load: Load, secs: f64) -> f64 {
    rig.lay_out(load);
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut seq = 0u64;
    let mut offsets = vec![0u64; load.in_flight];
    let mut headers = vec![0u8; load.in_flight * 64];
    let heads: Vec<u16> = (0..load.in_flight).map(|i| (i * 3) as u16).collect();
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for o in offsets.iter_mut() {
            *o = if load.random {
                next_offset(&mut state, 4096, load.bytes as u64)
            } else {
                let o = seq;
                seq = (seq + load.bytes as u64) % FILE_BYTES;
                o
            };
        }
        rig.batch(load, &offsets, &mut headers, &heads);
        ops += offsets.len() as u64;
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

/// Requests per second for `secs` seconds of `load` with `pread`/`pwrite` on the file.
fn raw_run(file: &std::fs::File, load: Load, secs: f64) -> f64 {
    let mut buf = vec![0x5au8; load.bytes];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut seq = 0u64;
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..load.in_flight {
            let off = if load.random {
                next_offset(&mut state, 4096, load.bytes as u64)
            } else {
                let o = seq;
                seq = (seq + load.bytes as u64) % FILE_BYTES;
                o
            };
            if load.write {
                file.write_all_at(&buf, off).expect("pwrite");
            } else {
                file.read_exact_at(&mut buf, off).expect("pread");
            }
            ops += 1;
        }
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let dir = args
        .get(2)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().expect("cwd"));
    let tmp = tempfile::tempdir_in(&dir).expect("temp dir");
    let path = tmp.path().join("disk.img");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("file");
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    for i in 0..FILE_BYTES >> 20 {
        file.write_all_at(&chunk, i << 20).expect("fill");
    }
    file.sync_all().expect("sync");
    // SAFETY: posix_fadvise on our own descriptor; it takes no pointers.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
    let raw = std::fs::File::open(&path).expect("raw handle");
    let raw_rw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("raw rw");
    drop(raw);
    let loads = [
        Load {
            name: "4 KiB random read",
            bytes: 4096,
            in_flight: 64,
            write: false,
            random: true,
        },
        Load {
            name: "4 KiB random write",
            bytes: 4096,
            in_flight: 64,
            write: true,
            random: true,
        },
        Load {
            name: "1 MiB sequential read",
            bytes: 1 << 20,
            in_flight: 8,
            write: false,
            random: false,
        },
        Load {
            name: "1 MiB sequential write",
            bytes: 1 << 20,
            in_flight: 8,
            write: true,
            random: false,
        },
    ];
    println!(
        "virtio-blk through the harness vs pread/pwrite, {secs} s per cell, file on {}",
        dir.display()
    );
    println!(
        "{:<24}| {:>12} | {:>12} | device/raw",
        "load", "device", "raw"
    );
    // An optional third argument runs one load only (0-3), device side only, and prints the
    // request count: for profiling.
    let only: Option<usize> = args.get(3).and_then(|s| s.parse().ok());
    let mut rig = Rig::new(&path);
    if let Some(i) = only {
        let rate = device_run(&mut rig, loads[i], secs);
        println!("{}: {rate:.0} requests/s (device only)", loads[i].name);
        return;
    }
    for load in loads {
        // Alternate to share any drift between the two.
        let raw_a = raw_run(&raw_rw, load, secs / 2.0);
        let dev_a = device_run(&mut rig, load, secs / 2.0);
        let dev_b = device_run(&mut rig, load, secs / 2.0);
        let raw_b = raw_run(&raw_rw, load, secs / 2.0);
        let (dev, raw) = ((dev_a + dev_b) / 2.0, (raw_a + raw_b) / 2.0);
        let unit = |ops: f64| {
            if load.bytes >= 1 << 20 {
                format!("{:.0} MB/s", ops * load.bytes as f64 / 1e6)
            } else {
                format!("{ops:.0} IOPS")
            }
        };
        println!(
            "{:<24}| {:>12} | {:>12} | {:.1} %",
            load.name,
            unit(dev),
            unit(raw),
            100.0 * dev / raw
        );
    }
    std::thread::sleep(Duration::from_millis(10));
    println!(
        "command: cargo build --release -p benches && target/release/blk_path {secs} {}",
        dir.display()
    );
}
