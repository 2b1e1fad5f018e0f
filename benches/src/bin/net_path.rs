//! The virtio-net packet path against a raw TAP loop, side by side in one run.
//!
//! TX: guest-driver harness → virtio-net device → TAP, versus `write(2)` of the same frames
//! on the same TAP. RX: TAP → device → harness buffers, versus `read(2)` on the same TAP;
//! RX frames are injected through an AF_PACKET socket on the TAP between timed phases.
//! Frames are Ethernet frames of 64 and 1500 bytes plus the 12-byte virtio header.
//!
//! Run (root, needs /dev/net/tun): `cargo build --release -p benches && target/release/net_path`

use std::cell::Cell;
use std::io::ErrorKind;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use audit_store::capture::CaptureConfig;
use devices::virtio::feature;
use devices::virtio::net::audit::FlowConfig;
use devices::virtio::net::shaper::FixedRate;
use devices::virtio::net::{
    AntiSpoofing, AuditStage, MacAddr, NetBackend, NetDevice, Shaper, Stages, Tap, QUEUE_SIZE,
    VNET_HDR_LEN,
};
use devices::virtio::test_utils::{GuestDriver, SCRATCH};
use e2e::inject::Injector;
use e2e::netns::NetNs;
use event_manager::{EventManager, SubscriberOps};
use vmm::audit_sink::{Identity, NicSink, SliverAudit};

const TAP: &str = "svbench0";
const BATCH: usize = QUEUE_SIZE as usize;
const VERSION_1: u32 = 32;
const F_MAC: u32 = 5;

type Dev = Arc<Mutex<NetDevice<Tap>>>;

fn thread_cpu_ns() -> u64 {
    vmm::clock::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Packets, wall seconds and CPU nanoseconds of one measured run.
#[derive(Clone, Copy)]
struct Run {
    packets: u64,
    secs: f64,
    cpu_ns: u64,
}

impl Run {
    fn pps(&self) -> f64 {
        self.packets as f64 / self.secs
    }
    fn gbps(&self, frame: usize) -> f64 {
        self.pps() * frame as f64 * 8.0 / 1e9
    }
    fn cpu_per_packet(&self) -> f64 {
        self.cpu_ns as f64 / self.packets as f64
    }
}

/// Batches every loop runs untimed before its timed ones: fresh buffers (the guest's, the
/// raw loop's) take their first-touch page faults there, whichever side runs them.
const WARM_UP: usize = 4;

/// Time `batches` calls of `f` (after [`WARM_UP`] untimed ones), excluding whatever `setup`
/// does before each.
fn measure<S>(
    batches: usize,
    state: &mut S,
    mut setup: impl FnMut(&mut S),
    mut f: impl FnMut(&mut S) -> u64,
) -> Run {
    for _ in 0..WARM_UP {
        setup(state);
        f(state);
    }
    let (mut packets, mut secs, mut cpu) = (0u64, 0f64, 0u64);
    for _ in 0..batches {
        setup(state);
        let (t, c) = (Instant::now(), thread_cpu_ns());
        packets += f(state);
        secs += t.elapsed().as_secs_f64();
        cpu += thread_cpu_ns() - c;
    }
    Run {
        packets,
        secs,
        cpu_ns: cpu,
    }
}

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x00, 0x01];
const SRC_IP: [u8; 4] = [10, 78, 0, 2];

/// virtio header + an Ethernet/IPv4/UDP frame of `len` bytes (at least 42) to a MAC nobody in
/// the namespace has.
fn frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN + len];
    let eth = &mut f[VNET_HDR_LEN..];
    eth[..6].copy_from_slice(&[0x02, 0, 0, 0, 0xbe, 0xef]);
    eth[6..12].copy_from_slice(&SRC_MAC);
    eth[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut eth[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&SRC_IP);
    ip[16..20].copy_from_slice(&[10, 78, 0, 9]);
    ip[20..22].copy_from_slice(&4000u16.to_be_bytes());
    ip[22..24].copy_from_slice(&5000u16.to_be_bytes());
    ip[24..26].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    f
}

/// Which stages the device path has besides the frame checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Audit {
    /// None.
    Off,
    /// Anti-spoofing alone: a sliver whose audit is off (anti-spoofing always runs).
    AntiSpoofing,
    /// Anti-spoofing, flow table and log; no header capture.
    Flows,
    /// All of it, with a fresh 64 MiB capture ring (the default for slivers): every page of
    /// the ring file is faulted in as the first pass reaches it.
    Full,
    /// All of it, the capture ring having wrapped once before the clock starts: a sliver's
    /// steady state.
    FullWrapped,
}

impl Audit {
    /// Untimed batches of `BATCH` frames before the timed ones: for [`Audit::FullWrapped`],
    /// enough to fill the capture ring once.
    fn warm_up_batches(self) -> usize {
        match self {
            Audit::FullWrapped => CaptureConfig::default()
                .geometry()
                .map_or(0, |g| g.slots.div_ceil(BATCH)),
            _ => 0,
        }
    }
}

/// Anti-spoofing for the bench's frames (they pass).
fn anti_spoofing() -> AntiSpoofing {
    AntiSpoofing {
        mac: SRC_MAC,
        ipv4: Some(SRC_IP.into()),
        deny_dst: Vec::new(),
    }
}

/// The stages as a sliver's VMM has them: anti-spoofing, and the audit with its flow table, a
/// log and (with `capture`) a 64 MiB capture ring in `dir`.
fn audit_stages(dir: &std::path::Path, capture: bool) -> Stages {
    let identity = Identity {
        slice: "bench_slice".into(),
        sliver: "bench".into(),
    };
    let config = CaptureConfig {
        enabled: capture,
        ..CaptureConfig::default()
    };
    let audit = SliverAudit::open(dir, identity, &config).expect("audit log");
    Stages {
        shaper: None,
        anti_spoofing: Some(anti_spoofing()),
        audit: Some(AuditStage::new(
            FlowConfig::default(),
            Box::new(NicSink::new(audit, 0)),
            capture,
        )),
    }
}

struct DevicePath {
    driver: GuestDriver,
    em: EventManager<Dev>,
    _audit_dir: Option<tempfile::TempDir>,
}

impl DevicePath {
    /// The device path with stages `audit`.
    fn new(audit: Audit) -> Self {
        let logs = matches!(audit, Audit::Flows | Audit::Full | Audit::FullWrapped);
        let audit_dir = logs.then(|| tempfile::tempdir().expect("tmp"));
        let stages = match &audit_dir {
            Some(d) => audit_stages(d.path(), audit != Audit::Flows),
            None if audit == Audit::AntiSpoofing => Stages {
                anti_spoofing: Some(anti_spoofing()),
                ..Stages::default()
            },
            None => Stages::default(),
        };
        Self::negotiating(0, stages, audit_dir)
    }

    /// A device path whose driver negotiated `features` besides VERSION_1 and MAC, with
    /// `stages` (whose audit, if any, writes into `audit_dir`).
    fn negotiating(features: u64, stages: Stages, audit_dir: Option<tempfile::TempDir>) -> Self {
        let tap = Tap::open(TAP).expect("open bench TAP");
        let dev: Dev = Arc::new(Mutex::new(
            NetDevice::new(tap, MacAddr(SRC_MAC), stages).expect("device"),
        ));
        let mut em = EventManager::<Dev>::new().expect("event manager");
        em.add_subscriber(dev.clone());
        let mut driver = GuestDriver::new(dev);
        driver.init(
            feature(VERSION_1) | feature(F_MAC) | features,
            2,
            QUEUE_SIZE,
        );
        while em.run_with_timeout(0).expect("loop") > 0 {}
        Self {
            driver,
            em,
            _audit_dir: audit_dir,
        }
    }

    fn pump(&mut self) {
        while self.em.run_with_timeout(0).expect("loop") > 0 {}
    }
}

fn tx_device(len: usize, batches: usize, audit: Audit) -> Run {
    let p = DevicePath::new(audit);
    device_tx_loop(p, &frame(len), BATCH, (audit.warm_up_batches(), batches))
}

/// The stages with only a shaper, at a rate the bench never reaches (100 Gbit/s each way):
/// what admission and charging cost a frame when the sliver is not throttled.
fn shaped_stages() -> Stages {
    let rate = Some(100_000_000_000 / 8);
    let src = Arc::new(FixedRate {
        rates: [rate, rate],
        ..Default::default()
    });
    Stages {
        shaper: Some(Arc::new(Shaper::new(Box::new(src)))),
        ..Stages::default()
    }
}

fn tx_shaped(len: usize, batches: usize) -> Run {
    let p = DevicePath::negotiating(0, shaped_stages(), None);
    device_tx_loop(p, &frame(len), BATCH, (0, batches))
}

fn rx_shaped(len: usize, batches: usize, inj: &Injector) -> Run {
    let f = frame(len);
    let inject = || inj.send(&f[VNET_HDR_LEN..], BATCH);
    let p = DevicePath::negotiating(0, shaped_stages(), None);
    device_rx_loop(p, VNET_HDR_LEN + len, BATCH, (0, batches), inject)
}

fn tx_raw(len: usize, batches: usize) -> Run {
    raw_tx_loop(Tap::open(TAP).expect("tap"), &frame(len), BATCH, batches)
}

fn rx_device(len: usize, batches: usize, inj: &Injector, audit: Audit) -> Run {
    let f = frame(len);
    let inject = || inj.send(&f[VNET_HDR_LEN..], BATCH);
    device_rx_loop(
        DevicePath::new(audit),
        VNET_HDR_LEN + len,
        BATCH,
        (audit.warm_up_batches(), batches),
        inject,
    )
}

/// [`rx_device`] with the queue as a Linux guest's driver sets it up: MRG_RXBUF, GUEST_CSUM
/// and GUEST_TSO4 negotiated (a frame may need 64 KiB of buffers), 1 536-byte buffers
/// (Linux's mergeable buffers are 1 518 bytes to a page).
fn rx_device_mergeable(len: usize, batches: usize, inj: &Injector) -> Run {
    const MRG_RXBUF: u32 = 15;
    let f = frame(len);
    let inject = || inj.send(&f[VNET_HDR_LEN..], BATCH);
    let features = feature(MRG_RXBUF) | feature(F_GUEST_CSUM) | feature(F_GUEST_TSO4);
    device_rx_loop(
        DevicePath::negotiating(features, Stages::default(), None),
        1536,
        BATCH,
        (0, batches),
        inject,
    )
}

fn rx_raw(len: usize, batches: usize, inj: &Injector) -> Run {
    let f = frame(len);
    let inject = || inj.send(&f[VNET_HDR_LEN..], BATCH);
    raw_rx_loop(
        Tap::open(TAP).expect("tap"),
        VNET_HDR_LEN + len,
        BATCH,
        batches,
        inject,
    )
}

/// Where the bench's guest puts buffer `i` of `len` bytes for queue `q`: packed, each
/// rounded up to a cache line, as Linux's virtio-net driver carves its buffers out of page
/// fragments, and as the raw loops' buffers lie. (The harness's own slots are 68 KiB apart,
/// room for a 64 KiB frame each: every buffer's first bytes then share the same cache sets,
/// which no guest's driver arranges; see docs/benchmarks.md for what that did to RX.)
fn packed_buffer(q: u16, i: usize, len: usize) -> u64 {
    let stride = len.div_ceil(64) * 64;
    SCRATCH + u64::from(q) * 0x80_0000 + (i * stride) as u64
}

/// The device sends `count` copies of `frame` (virtio header included) per batch: the
/// guest's part (descriptors and data for every slot) is done once, then before each batch,
/// untimed, it republishes the avail ring and kicks (in a VM, the vCPU's work). Timed: the
/// device's event loop, and one read of the used index to count what it sent. `warm` untimed
/// batches go first.
fn device_tx_loop(
    mut p: DevicePath,
    frame: &[u8],
    count: usize,
    (warm, batches): (usize, usize),
) -> Run {
    for i in 0..count {
        let addr = packed_buffer(1, i, frame.len());
        p.driver.mem_write(addr, frame);
        p.driver
            .add_chain(1, i as u16, &[(addr, frame.len() as u32, false)]);
    }
    p.driver.kick(1);
    p.pump();
    let used = Cell::new(p.driver.take_used(1).len() as u16);
    let mut next = 0u16;
    let mut guest = |p: &mut DevicePath| {
        repost(&mut p.driver, 1, (&mut next, count as u16), used.get());
        p.driver.kick(1);
    };
    let mut device = |p: &mut DevicePath| {
        p.pump();
        used.set(p.driver.count_used(1));
        u64::from(used.get())
    };
    measure(warm, &mut p, &mut guest, &mut device);
    measure(batches, &mut p, guest, device)
}

/// The guest makes the `used` chains the device returned last available again, as a driver
/// reposts its buffers. The device takes a queue's chains in the order they were made
/// available, so they are the `used` after those reposted before: heads `next..` (advanced),
/// modulo the `count` chains the loop has.
fn repost(driver: &mut GuestDriver, q: u16, (next, count): (&mut u16, u16), used: u16) {
    let heads: Vec<u16> = (0..used).map(|i| (*next + i) % count).collect();
    *next = (*next + used) % count;
    driver.publish_many(q, &heads);
}

/// The guest makes the TX chains the device used available again (their frames unchanged)
/// and kicks; returns how many.
fn resend_used(driver: &mut GuestDriver) -> u64 {
    let heads: Vec<u16> = driver
        .take_used(1)
        .into_iter()
        .filter_map(|(id, _)| u16::try_from(id).ok())
        .collect();
    if !heads.is_empty() {
        driver.publish_many(1, &heads);
        driver.kick(1);
    }
    heads.len() as u64
}

/// The raw loop writes `count` copies of `frame` per batch, one buffer each, as the device
/// reads the guest ring's `count` buffers: a single reused buffer would stay in the cache
/// and measure it, not the TAP.
fn raw_tx_loop(tap: Tap, frame: &[u8], count: usize, batches: usize) -> Run {
    raw_tx_loop_with(tap, frame, (count, batches), |tap, f| {
        tap.write_frame(f).expect("raw write");
    })
}

/// [`raw_tx_loop`] with `writev(2)` of two iovecs per frame, the first 140 bytes and the
/// rest: the device's shape for a frame longer than the 140 bytes it copies. (Against
/// `tx-raw`, 30 interleaved runs each at 1 500 B: the same within the noise, so copying a
/// small frame whole to write one iovec gained nothing and was not kept.)
fn tx_raw_writev(len: usize, batches: usize) -> Run {
    let tap = Tap::open(TAP).expect("tap");
    raw_tx_loop_with(tap, &frame(len), (BATCH, batches), |tap, f| {
        let cut = f.len().min(140);
        let iovs = [
            libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: cut,
            },
            libc::iovec {
                iov_base: f[cut..].as_ptr() as *mut libc::c_void,
                iov_len: f.len() - cut,
            },
        ];
        // SAFETY: both iovecs describe parts of `f`, borrowed for the call.
        unsafe { tap.write_iov(&iovs) }.expect("raw writev");
    })
}

/// [`raw_tx_loop`] with the batch's writes submitted to io_uring at once (`IORING_OP_WRITE`
/// on the TAP, one `io_uring_enter(2)` a batch) instead of one `write(2)` each: what batching
/// the system call per frame would save. The TAP is non-blocking, so the kernel runs the
/// writes inline in `io_uring_enter` (checked: the process's CPU time, which would include
/// io_uring's worker threads, is within 1.2× of the thread's).
fn tx_raw_uring(len: usize, batches: usize) -> Run {
    use std::os::fd::AsRawFd;
    // The frames and the TAP are declared before the ring, so they outlive it: a write still
    // in flight when a panic unwinds never points at freed memory or a closed descriptor.
    let frames: Vec<Vec<u8>> = (0..BATCH).map(|_| frame(len)).collect();
    let tap = Tap::open(TAP).expect("tap");
    let fd = io_uring::types::Fd(tap.as_raw_fd());
    let mut ring = io_uring::IoUring::new(BATCH as u32).expect("io_uring_setup");
    let process_cpu = || vmm::clock::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID);
    let (start, mut written) = (process_cpu(), 0u64);
    let run = measure(
        batches,
        &mut ring,
        |_| {},
        |ring| {
            for (i, f) in frames.iter().enumerate() {
                let bytes = u32::try_from(f.len()).expect("frame length");
                let write = io_uring::opcode::Write::new(fd, f.as_ptr(), bytes)
                    .build()
                    .user_data(i as u64);
                // SAFETY: `f` lives in `frames` and `tap` stays open, both unchanged, until
                // every write of the batch has completed (the wait below) and, declared
                // before the ring, until the ring itself is gone.
                unsafe { ring.submission().push(&write) }.expect("submission queue room");
            }
            ring.submit_and_wait(BATCH).expect("io_uring_enter");
            for done in ring.completion() {
                let i = usize::try_from(done.user_data()).expect("index");
                assert_eq!(
                    usize::try_from(done.result()).ok(),
                    Some(frames[i].len()),
                    "write of frame {i}: result {} (a negative errno or a short write)",
                    done.result()
                );
                written += 1;
            }
            BATCH as u64
        },
    );
    assert_eq!(written, ((WARM_UP + batches) * BATCH) as u64);
    let process = (process_cpu() - start) as f64;
    assert!(
        process < 1.2 * run.cpu_ns as f64 * (WARM_UP + batches) as f64 / batches as f64,
        "io_uring ran the writes on worker threads: thread CPU undercounts"
    );
    run
}

/// `count` copies of `frame` per batch, each written with `write`.
fn raw_tx_loop_with(
    mut tap: Tap,
    frame: &[u8],
    (count, batches): (usize, usize),
    write: impl Fn(&mut Tap, &[u8]),
) -> Run {
    let frames: Vec<Vec<u8>> = (0..count).map(|_| frame.to_vec()).collect();
    measure(
        batches,
        &mut tap,
        |_| {},
        |tap| {
            for f in &frames {
                write(tap, f);
            }
            count as u64
        },
    )
}

/// The device delivers the `count` frames `inject` sends (not timed) per batch into as many
/// posted `buf_len`-byte guest buffers. Timed: the device's event loop, and one read of the
/// used index to count what it delivered; the guest's reposting is not. `warm` untimed
/// batches go first.
fn device_rx_loop(
    mut p: DevicePath,
    buf_len: usize,
    count: usize,
    (warm, batches): (usize, usize),
    inject: impl Fn(),
) -> Run {
    for i in 0..count {
        let addr = packed_buffer(0, i, buf_len);
        p.driver
            .add_chain(0, i as u16, &[(addr, buf_len as u32, true)]);
    }
    p.driver.kick(0);
    p.pump();
    // A batch may deliver fewer frames than were injected (the rest are still on their way
    // to the TAP): only the chains used are reposted.
    let used = Cell::new(0u16);
    let mut next = 0u16;
    let mut guest = |p: &mut DevicePath| {
        repost(&mut p.driver, 0, (&mut next, count as u16), used.get());
        p.driver.kick(0);
        p.pump();
        inject();
    };
    let mut device = |p: &mut DevicePath| {
        p.pump();
        used.set(p.driver.count_used(0));
        u64::from(used.get())
    };
    measure(warm, &mut p, &mut guest, &mut device);
    measure(batches, &mut p, guest, device)
}

/// The raw loop reads what `inject` sent (not timed) into `count` buffers of `buf_len`
/// bytes in turn, until the TAP is empty.
fn raw_rx_loop(
    mut tap: Tap,
    buf_len: usize,
    count: usize,
    batches: usize,
    inject: impl Fn(),
) -> Run {
    let mut bufs: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; buf_len]).collect();
    measure(
        batches,
        &mut tap,
        |_| inject(),
        |tap| {
            let mut n = 0usize;
            loop {
                match tap.read_frame(&mut bufs[n % count]) {
                    Ok(_) => n += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("raw read: {e}"),
                }
            }
            n as u64
        },
    )
}

/// The raw RX loop with the device's iovec shape: `readv(2)` into a 140-byte head buffer,
/// the rest of one of `count` buffers of `buf_len` bytes in turn (as the raw loop's), and a
/// 1-byte spare (the kernel's multi-segment iterator instead of `read(2)`'s single user
/// buffer).
fn rx_raw_readv(len: usize, batches: usize, inj: &Injector) -> Run {
    let f = frame(len);
    let tap = Tap::open(TAP).expect("tap");
    raw_readv_loop(tap, (VNET_HDR_LEN + len, BATCH), batches, || {
        inj.send(&f[VNET_HDR_LEN..], BATCH)
    })
}

/// [`rx_raw_readv`] for the GSO frames of [`gso_rx_raw`].
fn gso_rx_raw_readv(batches: usize, inj: &Injector) -> Run {
    let mut tap = Tap::open(TAP).expect("tap");
    tap.set_guest_offloads(feature(F_GUEST_CSUM) | feature(F_GUEST_TSO4))
        .expect("TUNSETOFFLOAD");
    let f = gso_frame(10);
    raw_readv_loop(tap, (65_562, GSO_BATCH), batches, || {
        inj.send(&f, GSO_BATCH)
    })
}

/// Read what `inject` sent (not timed) with the device's iovec shape, into `count` buffers
/// of `buf_len` bytes in turn, until the TAP is empty.
fn raw_readv_loop(
    mut tap: Tap,
    (buf_len, count): (usize, usize),
    batches: usize,
    inject: impl Fn(),
) -> Run {
    let mut head = [0u8; 140];
    let mut rests: Vec<Vec<u8>> = (0..count).map(|_| vec![0u8; buf_len]).collect();
    let mut spare = [0u8; 1];
    measure(
        batches,
        &mut tap,
        |_| inject(),
        |tap| {
            let mut n = 0;
            loop {
                let rest = &mut rests[n % count];
                let iovs = [
                    libc::iovec {
                        iov_base: head.as_mut_ptr().cast(),
                        iov_len: head.len(),
                    },
                    libc::iovec {
                        iov_base: rest.as_mut_ptr().cast(),
                        iov_len: rest.len(),
                    },
                    libc::iovec {
                        iov_base: spare.as_mut_ptr().cast(),
                        iov_len: spare.len(),
                    },
                ];
                // SAFETY: the iovecs point to buffers this closure owns for the call.
                match unsafe { tap.read_iov(&iovs) } {
                    Ok(_) => n += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("raw readv: {e}"),
                }
            }
            n as u64
        },
    )
}

/// Rounds of [`side_by_side`]; the ratio printed is their median.
const ROUNDS: usize = 5;

/// Run `a` and `b` for `batches` batches each (rounded up to a multiple of `2 * ROUNDS`),
/// interleaved in [`ROUNDS`] rounds of a, b, b, a (so drift on a shared machine affects both
/// alike): each one's runs added up, and the median over the rounds of a's packet rate over
/// b's (a burst of load from the rest of the host in one round moves a sum, not the median).
fn side_by_side(
    batches: usize,
    a: impl Fn(usize) -> Run,
    b: impl Fn(usize) -> Run,
) -> (Run, Run, f64) {
    let per = batches.div_ceil(2 * ROUNDS);
    let zero = Run {
        packets: 0,
        secs: 0.0,
        cpu_ns: 0,
    };
    let (mut sum_a, mut sum_b, mut ratios) = (zero, zero, Vec::with_capacity(ROUNDS));
    for _ in 0..ROUNDS {
        let (a1, b1) = (a(per), b(per));
        let (b2, a2) = (b(per), a(per));
        let (ra, rb) = (add(a1, a2), add(b1, b2));
        ratios.push(ra.pps() / rb.pps());
        (sum_a, sum_b) = (add(sum_a, ra), add(sum_b, rb));
    }
    ratios.sort_by(f64::total_cmp);
    (sum_a, sum_b, ratios[ROUNDS / 2])
}

/// One table row: `dev` and `raw` (or on and off) and the median ratio of their rates.
fn row(dir: &str, len: usize, (dev, raw, ratio): (Run, Run, f64)) {
    println!(
        "{dir:<3} {len:>5} B | {:>10.0} {:>7.3} {:>8.0} | {:>10.0} {:>7.3} {:>8.0} | {:>6.1} %",
        dev.pps(),
        dev.gbps(len),
        dev.cpu_per_packet(),
        raw.pps(),
        raw.gbps(len),
        raw.cpu_per_packet(),
        100.0 * ratio
    );
}

fn main() {
    let batches: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("BATCHES must be a number"))
        .unwrap_or(2000);
    // With NET_PATH_IDLE_THREAD set, the process has one idle thread more, sharing its
    // descriptor table: what a VMM's event loop would see if its vCPU threads kept sharing
    // theirs (vmm::fd_table), for `perf record` to show the difference.
    if std::env::var_os("NET_PATH_IDLE_THREAD").is_some() {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    // For profiling one path alone: `net_path BATCHES tx-device [LEN]` (or tx-raw, tx-audit,
    // tx-audit-wrapped, tx-flows, tx-anti-spoofing, tx-raw-writev, tx-raw-uring, rx-device,
    // rx-raw, rx-raw-readv, rx-audit, rx-audit-wrapped, rx-flows, rx-anti-spoofing,
    // rx-device-mrg (MRG_RXBUF and GUEST_TSO4 as a Linux guest negotiates them), tx-shaped,
    // rx-shaped (a shaper that never throttles), gso-rx-device, gso-rx-raw, gso-rx-raw-readv;
    // LEN bytes per frame, 64 if not given; the GSO paths count frames of 64 KiB);
    // `net_path BATCHES seccomp`, `gso` or `audit`: those tables alone; `rx`: the main
    // table's RX rows alone.
    let only = std::env::args().nth(2);
    let len: usize = std::env::args()
        .nth(3)
        .map_or(64, |a| a.parse().expect("LEN must be a number"));
    let ns = NetNs::new("svbench");
    ns.add_tap(TAP, "10.78.0.1/24");
    ns.enter_this_thread();
    // Queue room for one whole batch of injected frames.
    let status = ns
        .command("ip")
        .args(["link", "set", TAP, "txqueuelen", "4096"])
        .status()
        .expect("ip");
    assert!(status.success());
    let inj = Injector::open(TAP);
    if only.as_deref() == Some("seccomp") {
        seccomp_table(batches, &inj);
        return;
    }
    if only.as_deref() == Some("audit") {
        audit_tables(batches, &inj);
        return;
    }
    if only.as_deref() == Some("rx") {
        table_header(batches);
        rx_rows(batches, &inj);
        return;
    }
    if let Some(only) = only.as_deref() {
        let run = match only {
            "tx-device" => tx_device(len, batches, Audit::Off),
            "tx-audit" => tx_device(len, batches, Audit::Full),
            "tx-audit-wrapped" => tx_device(len, batches, Audit::FullWrapped),
            "tx-flows" => tx_device(len, batches, Audit::Flows),
            "tx-anti-spoofing" => tx_device(len, batches, Audit::AntiSpoofing),
            "rx-audit" => rx_device(len, batches, &inj, Audit::Full),
            "rx-audit-wrapped" => rx_device(len, batches, &inj, Audit::FullWrapped),
            "rx-flows" => rx_device(len, batches, &inj, Audit::Flows),
            "rx-anti-spoofing" => rx_device(len, batches, &inj, Audit::AntiSpoofing),
            "rx-device-mrg" => rx_device_mergeable(len, batches, &inj),
            "tx-shaped" => tx_shaped(len, batches),
            "rx-shaped" => rx_shaped(len, batches, &inj),
            "tx-raw" => tx_raw(len, batches),
            "tx-raw-writev" => tx_raw_writev(len, batches),
            "tx-raw-uring" => tx_raw_uring(len, batches),
            "rx-device" => rx_device(len, batches, &inj, Audit::Off),
            "rx-raw" => rx_raw(len, batches, &inj),
            "rx-raw-readv" => rx_raw_readv(len, batches, &inj),
            "gso-rx-device" | "gso-rx-raw" | "gso-rx-raw-readv" => {
                let inj = Injector::open_with_vnet_hdr(TAP).with_sndbuf(64 << 20);
                match only {
                    "gso-rx-device" => gso_rx_device(batches, &inj),
                    "gso-rx-raw" => gso_rx_raw(batches, &inj),
                    _ => gso_rx_raw_readv(batches, &inj),
                }
            }

            "gso" => {
                gso_table(batches);
                return;
            }
            other => panic!("unknown path {other:?}"),
        };
        println!(
            "{only}: {:.0} pps, {:.0} ns CPU per packet, {} of {} frames",
            run.pps(),
            run.cpu_per_packet(),
            run.packets,
            batches * BATCH
        );
        return;
    }
    // Warm up both paths once so page faults and caches do not favour either.
    tx_device(64, 50, Audit::Off);
    tx_device(64, 50, Audit::Full);
    tx_raw(64, 50);

    table_header(batches);
    for len in [64usize, 1500] {
        let cell = side_by_side(
            batches,
            |n| tx_device(len, n, Audit::Off),
            |n| tx_raw(len, n),
        );
        row("TX", len, cell);
    }
    rx_rows(batches, &inj);
    gso_table(batches);
    seccomp_table(batches, &inj);
    audit_tables(batches, &inj);
}

/// The device/raw table's title and column names.
fn table_header(batches: usize) {
    println!(
        "virtio-net packet path vs raw TAP, {batches} batches of {BATCH} frames per side and cell, \
         in {ROUNDS} interleaved rounds; the ratio is the rounds' median"
    );
    println!(
        "dir frame   | {:>10} {:>7} {:>8} | {:>10} {:>7} {:>8} | device/raw",
        "dev pps", "Gbit/s", "ns CPU", "raw pps", "Gbit/s", "ns CPU"
    );
}

/// The table's RX rows (64 and 1 500 bytes), device vs raw TAP.
fn rx_rows(batches: usize, inj: &Injector) {
    for len in [64usize, 1500] {
        let cell = side_by_side(
            batches,
            |n| rx_device(len, n, inj, Audit::Off),
            |n| rx_raw(len, n, inj),
        );
        row("RX", len, cell);
    }
}

/// The audit stage on vs off, with each kind of audit.
fn audit_tables(batches: usize, inj: &Injector) {
    // Off is a sliver whose audit is off: anti-spoofing still runs (and parses the headers).
    for (audit, what) in [
        (Audit::Flows, "flow table and log; no capture"),
        (
            Audit::Full,
            "flow table, log, 64 MiB capture ring on its first pass (fresh file)",
        ),
        (
            Audit::FullWrapped,
            "flow table, log, 64 MiB capture ring wrapped once before timing (steady state)",
        ),
    ] {
        on_off_table(
            &format!("audit stage on vs off (device path with anti-spoofing; on: {what})"),
            batches,
            |dir, len, n| match dir {
                "TX" => tx_device(len, n, audit),
                _ => rx_device(len, n, inj, audit),
            },
            |dir, len, n| match dir {
                "TX" => tx_device(len, n, Audit::AntiSpoofing),
                _ => rx_device(len, n, inj, Audit::AntiSpoofing),
            },
        );
    }
}

/// A table of `on(dir, frame length, batches)` against `off(…)` for TX and RX at 64 and 1500
/// bytes, each cell side by side for `batches` batches each.
fn on_off_table(
    title: &str,
    batches: usize,
    on: impl Fn(&str, usize, usize) -> Run,
    off: impl Fn(&str, usize, usize) -> Run,
) {
    println!();
    println!("{title}");
    println!(
        "dir frame   | {:>10} {:>7} {:>8} | {:>10} {:>7} {:>8} | on/off",
        "on pps", "Gbit/s", "ns CPU", "off pps", "Gbit/s", "ns CPU"
    );
    for dir in ["TX", "RX"] {
        for len in [64usize, 1500] {
            let cell = side_by_side(batches, |n| on(dir, len, n), |n| off(dir, len, n));
            row(dir, len, cell);
        }
    }
}

/// The device path with the event loop's seccomp filter on vs off.
fn seccomp_table(batches: usize, inj: &Injector) {
    vmm::seccomp::prepare(vmm::seccomp::SeccompMode::Log, None).expect("seccomp filters");
    let device = |dir: &str, len, n| match dir {
        "TX" => tx_device(len, n, Audit::Off),
        _ => rx_device(len, n, inj, Audit::Off),
    };
    on_off_table(
        "seccomp filter on vs off (device path, no audit; the event loop's allow-list)",
        batches,
        |dir, len, n| filtered(|| device(dir, len, n)),
        |dir, len, n| unfiltered(|| device(dir, len, n)),
    );
}

/// Run `f` on a thread of its own that has first entered the event loop's seccomp filter
/// (log mode: the same BPF program runs on every call; only a miss would act differently).
fn filtered(f: impl FnOnce() -> Run + Send) -> Run {
    std::thread::scope(|s| {
        s.spawn(|| {
            vmm::seccomp::enter(vmm::seccomp::ThreadKind::EventLoop).expect("seccomp filter");
            f()
        })
        .join()
        .expect("filtered run")
    })
}

/// Run `f` on a thread of its own without a filter (the same thread set-up as [`filtered`]).
fn unfiltered(f: impl FnOnce() -> Run + Send) -> Run {
    std::thread::scope(|s| s.spawn(f).join().expect("unfiltered run"))
}

fn add(a: Run, b: Run) -> Run {
    Run {
        packets: a.packets + b.packets,
        secs: a.secs + b.secs,
        cpu_ns: a.cpu_ns + b.cpu_ns,
    }
}

/// Feature bits (virtio 1.2 section 5.1.3): CSUM 0, GUEST_CSUM 1, GUEST_TSO4 7, HOST_TSO4 11.
const F_CSUM: u32 = 0;
const F_GUEST_CSUM: u32 = 1;
const F_GUEST_TSO4: u32 = 7;
const F_HOST_TSO4: u32 = 11;
/// TCP payload of each GSO frame, and its MSS: 45 wire segments of at most 1 514 bytes.
const GSO_PAYLOAD: usize = 64_000;
const GSO_MSS: u16 = 1448;
/// GSO frames per batch: what a TAP's queue and the injector's buffer hold comfortably.
const GSO_BATCH: usize = 64;

/// virtio header (NEEDS_CSUM, GSO_TCPV4, gso_size [`GSO_MSS`], csum_start 34, offset 16;
/// virtio 1.2 section 5.1.6) + an Ethernet/IPv4/TCP frame with [`GSO_PAYLOAD`] bytes, to a MAC
/// nobody in the namespace has. `hdr_len` is the 10-byte `struct virtio_net_hdr` for the
/// packet socket, 12 for the device and the TAP.
fn gso_frame(hdr_len: usize) -> Vec<u8> {
    let mut f = vec![0u8; hdr_len];
    f[0] = 1;
    f[1] = 1;
    f[2..4].copy_from_slice(&54u16.to_le_bytes());
    f[4..6].copy_from_slice(&GSO_MSS.to_le_bytes());
    f[6..8].copy_from_slice(&34u16.to_le_bytes());
    f[8..10].copy_from_slice(&16u16.to_le_bytes());
    let mut eth = vec![0x02, 0, 0, 0, 0xbe, 0xef];
    eth.extend_from_slice(&SRC_MAC);
    eth.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    eth.extend_from_slice(&((40 + GSO_PAYLOAD) as u16).to_be_bytes());
    eth.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    eth.extend_from_slice(&SRC_IP);
    eth.extend_from_slice(&[10, 78, 0, 9]);
    eth.extend_from_slice(&[
        0x9c, 0x40, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x10, 0xff, 0xff,
    ]);
    eth.extend_from_slice(&[0, 0, 0, 0]);
    eth.resize(54 + GSO_PAYLOAD, 0x5a);
    f.extend(eth);
    f
}

/// Bytes of the wire segments of one [`gso_frame`]: the payload, and 54 header bytes for
/// each segment.
fn gso_wire_bytes() -> u64 {
    (GSO_PAYLOAD + 54 * GSO_PAYLOAD.div_ceil(usize::from(GSO_MSS))) as u64
}

/// A device path that negotiated `features` besides VERSION_1 and MAC, with `stages`.
fn offload_path(features: u64, stages: Stages) -> DevicePath {
    DevicePath::negotiating(features, stages, None)
}

fn gso_tx_device(batches: usize) -> Run {
    let p = offload_path(feature(F_CSUM) | feature(F_HOST_TSO4), Stages::default());
    device_tx_loop(p, &gso_frame(VNET_HDR_LEN), GSO_BATCH, (0, batches))
}

fn gso_tx_raw(batches: usize) -> Run {
    let tap = Tap::open(TAP).expect("tap");
    raw_tx_loop(tap, &gso_frame(VNET_HDR_LEN), GSO_BATCH, batches)
}

fn gso_rx_device(batches: usize, inj: &Injector) -> Run {
    let features = feature(F_GUEST_CSUM) | feature(F_GUEST_TSO4);
    let f = gso_frame(10);
    let inject = || inj.send(&f, GSO_BATCH);
    device_rx_loop(
        offload_path(features, Stages::default()),
        65_562,
        GSO_BATCH,
        (0, batches),
        inject,
    )
}

fn gso_rx_raw(batches: usize, inj: &Injector) -> Run {
    let mut tap = Tap::open(TAP).expect("tap");
    tap.set_guest_offloads(feature(F_GUEST_CSUM) | feature(F_GUEST_TSO4))
        .expect("TUNSETOFFLOAD");
    let f = gso_frame(10);
    raw_rx_loop(tap, 65_562, GSO_BATCH, batches, || inj.send(&f, GSO_BATCH))
}

/// 64 KiB TCP GSO frames through the device vs the raw TAP, both ways, and the shaper's
/// accuracy with them at 100 Mbit/s.
fn gso_table(batches: usize) {
    let inj = Injector::open_with_vnet_hdr(TAP).with_sndbuf(64 << 20);
    let batches = (batches / 8).max(2);
    println!();
    println!(
        "64 KiB TCP GSO frames ({GSO_PAYLOAD} B payload, MSS {GSO_MSS}), {batches} batches of {GSO_BATCH}; Gbit/s of wire segments"
    );
    println!(
        "dir frame   | {:>10} {:>7} {:>8} | {:>10} {:>7} {:>8} | device/raw",
        "dev fps", "Gbit/s", "ns CPU", "raw fps", "Gbit/s", "ns CPU"
    );
    let wire = gso_wire_bytes() as usize;
    let cell = side_by_side(batches, gso_tx_device, gso_tx_raw);
    row("TX", wire, cell);
    // The injector also hears every frame on the TAP: empty its queue between phases.
    while inj.recv_incoming().is_some() {}
    let cell = side_by_side(batches, |n| gso_rx_device(n, &inj), |n| gso_rx_raw(n, &inj));
    row("RX", wire, cell);
    while inj.recv_incoming().is_some() {}
    gso_shaper_accuracy();
}

/// TX GSO frames under a 100 Mbit/s shaper for 3 s: the wire bytes sent per second, against
/// the cap.
fn gso_shaper_accuracy() {
    let cap = 100_000_000 / 8;
    let src = Arc::new(FixedRate {
        rates: [Some(cap), None],
        ..Default::default()
    });
    let stages = Stages {
        shaper: Some(Arc::new(Shaper::new(Box::new(src.clone())))),
        ..Stages::default()
    };
    let mut p = offload_path(feature(F_CSUM) | feature(F_HOST_TSO4), stages);
    let f = gso_frame(VNET_HDR_LEN);
    for _ in 0..GSO_BATCH {
        p.driver.add_buffer(1, Some(&f), 0);
    }
    p.driver.kick(1);
    // Let the bucket's initial burst go before the clock starts.
    let warm = Instant::now();
    while warm.elapsed().as_millis() < 500 {
        p.em.run_with_timeout(10).expect("loop");
        resend_used(&mut p.driver);
    }
    let start = Instant::now();
    let mut frames = 0u64;
    while start.elapsed().as_secs_f64() < 3.0 {
        p.em.run_with_timeout(10).expect("loop");
        frames += resend_used(&mut p.driver);
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = (frames * gso_wire_bytes()) as f64 * 8.0 / secs;
    println!(
        "shaper at 100 Mbit/s with GSO frames: {:.2} Mbit/s of wire segments over {secs:.1} s ({frames} frames), error {:+.2} %",
        rate / 1e6,
        100.0 * (rate - 1e8) / 1e8
    );
}
