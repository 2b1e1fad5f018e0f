//! A virtio-blk device on a temporary file, driven by the guest-driver harness, and a helper
//! that lays out one request chain the way a driver does.

pub use std::sync::{Arc, Mutex};

pub use devices::virtio::block::*;
pub use devices::virtio::feature;
pub use devices::virtio::test_utils::{GuestDriver, RawDesc, SCRATCH};
pub use event_manager::{EventManager, SubscriberOps};
pub use virtio_bindings::virtio_blk::*;
pub use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
pub use virtio_bindings::virtio_mmio::*;

/// The device under test, as the event loop and the harness share it.
pub type Dev = Arc<Mutex<BlockDevice>>;

/// The request queue.
pub const Q: u16 = 0;
/// Disk size in the tests: 1 MiB.
pub const DISK_BYTES: u64 = 1 << 20;
/// What a writable disk offers (virtio 1.2 section 5.2.3).
pub const RW_FEATURES: u64 = feature(VIRTIO_F_VERSION_1)
    | feature(VIRTIO_BLK_F_SEG_MAX)
    | feature(VIRTIO_BLK_F_BLK_SIZE)
    | feature(VIRTIO_BLK_F_FLUSH)
    | feature(VIRTIO_BLK_F_DISCARD)
    | feature(VIRTIO_BLK_F_WRITE_ZEROES);

/// Guest addresses a request uses: header, status byte, data.
pub const HEADER_AT: u64 = SCRATCH;
/// The status byte.
pub const STATUS_AT: u64 = SCRATCH + 0x100;
/// Data buffers start here, 64 KiB apart.
pub const DATA_AT: u64 = SCRATCH + 0x10_000;

/// A device set up by the harness's driver, its disk file, and its loop.
pub struct Fixture {
    /// The guest's side.
    pub driver: GuestDriver,
    /// The device's event loop.
    pub em: EventManager<Dev>,
    /// The device's counters.
    pub counters: Arc<BlockCounters>,
    /// The disk file.
    pub file: tempfile::NamedTempFile,
    /// The next free descriptor index.
    next_desc: u16,
}

/// A device on a fresh zeroed 1 MiB disk, writable, the driver accepting `features`.
pub fn fixture_with(read_only: bool, features: u64) -> Fixture {
    let file = tempfile::NamedTempFile::new().expect("tmp");
    file.as_file().set_len(DISK_BYTES).expect("size");
    let disk = Disk::open(file.path(), read_only, Some("slv-disk-0")).expect("disk");
    let dev: Dev = Arc::new(Mutex::new(BlockDevice::new(disk).expect("device")));
    let counters = dev.lock().expect("dev").counters();
    let mut em = EventManager::<Dev>::new().expect("event manager");
    em.add_subscriber(dev.clone());
    let mut driver = GuestDriver::new(dev);
    driver.init(features, 1, QUEUE_SIZE);
    let mut f = Fixture {
        driver,
        em,
        counters,
        file,
        next_desc: 0,
    };
    f.pump();
    f
}

/// A writable disk with every feature accepted.
pub fn fixture() -> Fixture {
    fixture_with(false, RW_FEATURES)
}

/// One data buffer of a request: its guest address, length and direction.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// The 16-byte request header (`struct virtio_blk_req`).
pub fn header(kind: u32, sector: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(&kind.to_le_bytes());
    h[8..].copy_from_slice(&sector.to_le_bytes());
    h
}

impl Fixture {
    /// Let the device handle everything pending.
    pub fn pump(&mut self) {
        while self.em.run_with_timeout(0).expect("event loop") > 0 {}
    }

    /// Submit the chain `descs` (address, length, device-writable) and run the device;
    /// returns the used length, or `None` if the chain was not returned.
    pub fn submit(&mut self, descs: &[(u64, u32, bool)]) -> Option<u32> {
        let n = u16::try_from(descs.len()).expect("chain length");
        if self.next_desc + n > QUEUE_SIZE {
            self.next_desc = 0;
        }
        let first = self.next_desc;
        self.next_desc += n;
        self.driver.mem_write(STATUS_AT, &[0xff]);
        self.driver.add_chain(Q, first, descs);
        self.driver.kick(Q);
        self.pump();
        let used = self.driver.take_used(Q);
        assert!(used.len() <= 1, "one request, at most one answer: {used:?}");
        used.first().map(|&(id, len)| {
            assert_eq!(id, u32::from(first), "the chain's head comes back");
            len
        })
    }

    /// A request as Linux lays it out: header, `data`, status byte; returns (status, used
    /// length).
    pub fn request(&mut self, kind: u32, sector: u64, data: &[Buf]) -> (u8, u32) {
        self.driver.mem_write(HEADER_AT, &header(kind, sector));
        let mut descs = vec![(HEADER_AT, 16, false)];
        descs.extend(data.iter().map(|b| (b.addr, b.len, b.writable)));
        descs.push((STATUS_AT, 1, true));
        let used = self.submit(&descs).expect("answered");
        (self.status(), used)
    }

    /// The status byte as the device left it.
    pub fn status(&self) -> u8 {
        self.driver.read_mem(STATUS_AT, 1)[0]
    }

    /// Write `bytes` at `sector` through the device; returns the status.
    pub fn write(&mut self, sector: u64, bytes: &[u8]) -> u8 {
        self.driver.mem_write(DATA_AT, bytes);
        let len = u32::try_from(bytes.len()).expect("len");
        self.request(
            VIRTIO_BLK_T_OUT,
            sector,
            &[Buf {
                addr: DATA_AT,
                len,
                writable: false,
            }],
        )
        .0
    }

    /// Read `len` bytes at `sector` through the device; returns the status and the bytes.
    pub fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
        self.driver.mem_write(DATA_AT, &vec![0xee; len as usize]);
        let (status, _) = self.request(
            VIRTIO_BLK_T_IN,
            sector,
            &[Buf {
                addr: DATA_AT,
                len,
                writable: true,
            }],
        );
        (status, self.driver.read_mem(DATA_AT, len as usize))
    }

    /// The device's counters now.
    pub fn snap(&self) -> BlockCountersSnapshot {
        self.counters.snapshot()
    }

    /// The device still reads and writes after whatever the test did.
    pub fn assert_still_works(&mut self) {
        assert_eq!(self.write(3, &[0x5a; 512]), 0, "write after abuse");
        let (status, back) = self.read(3, 512);
        assert_eq!((status, back), (0, vec![0x5a; 512]), "read after abuse");
    }
}
