//! A sliver's VMM minus the guest kernel: the real virtio-net device with the real shaper
//! stage, on a real TAP, bound to a node daemon's ledger slot, fed at native speed by the
//! guest-driver harness, which keeps the TX ring full (a backlogged guest).
//!
//! The guests here are too slow to load a link (guest kernel code is emulated), so shaping is
//! tested and benchmarked with one of these processes per sliver.
//!
//! `sliver_loadgen --tap NAME [--ledger PATH --slot N] [--frame BYTES] [--src-ip A.B.C.D]
//! [--dst-ip A.B.C.D] [--dst-mac MAC] [--seconds S] [--offer-bps R]`; `--offer-bps` limits what the "guest" offers with a fixed
//! token bucket instead of the ledger (to load an external shaper such as HTB);
//! `--audit-dir DIR --slice S --sliver N --ip A.B.C.D [--spoof-every K]` puts the VMM's audit
//! stage (anti-spoofing, flow records, header capture) in the pipeline, and makes every K-th
//! frame claim another source address; `--deny-dst CIDR` (repeatable) gives anti-spoofing
//! destinations to drop; `--rx` makes it receive instead (it keeps its RX ring
//! full of buffers; frames come from whatever the host sends into the TAP); prints `{"bytes":..,"packets":..,"cpu_ms":..,"secs":..}` at the end.
//! SIGTERM ends it cleanly at once (as a VMM whose guest is stopped: its NIC and its ledger
//! slot's backlog flags go); SIGKILL leaves the flags for the daemon to expire.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use audit_store::capture::CaptureConfig;
use devices::virtio::feature;
use devices::virtio::net::audit::FlowConfig;
use devices::virtio::net::shaper::FixedRate;
use devices::virtio::net::{
    AntiSpoofing, AuditStage, MacAddr, NetDevice, Shaper, Stages, Tap, QUEUE_SIZE, RX_QUEUE,
    TX_QUEUE,
};
use devices::virtio::test_utils::GuestDriver;
use event_manager::{EventManager, SubscriberOps};
use vmm::audit_sink::{Identity, NicSink, SliverAudit};

type Dev = Arc<Mutex<NetDevice<Tap>>>;

const VERSION_1: u32 = 32;
const F_MAC: u32 = 5;

struct Args {
    tap: String,
    ledger: Option<(PathBuf, usize)>,
    frame: usize,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    dst_mac: [u8; 6],
    seconds: f64,
    offer_bps: Option<u64>,
    audit: Option<(PathBuf, String, String)>,
    ip: Option<Ipv4Addr>,
    deny_dst: Vec<ipnet::Ipv4Net>,
    spoof_every: u64,
    rx: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut tap = None;
    let (mut ledger, mut slot) = (None, None);
    let mut frame = 1500;
    let mut src_ip = Ipv4Addr::new(10, 200, 0, 1);
    let mut dst_ip = Ipv4Addr::new(10, 201, 0, 1);
    let mut dst_mac = [0x02, 0, 0, 0, 0, 0x01];
    let mut seconds = f64::INFINITY;
    let mut offer_bps = None;
    let (mut audit_dir, mut slice, mut sliver, mut ip) = (None, None, None, None);
    let mut spoof_every = 0;
    let mut deny_dst = Vec::new();
    let mut rx = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--tap" => tap = Some(value()?),
            "--ledger" => ledger = Some(PathBuf::from(value()?)),
            "--slot" => slot = Some(value()?.parse().map_err(|e| format!("--slot: {e}"))?),
            "--frame" => frame = value()?.parse().map_err(|e| format!("--frame: {e}"))?,
            "--src-ip" => src_ip = value()?.parse().map_err(|e| format!("--src-ip: {e}"))?,
            "--dst-ip" => dst_ip = value()?.parse().map_err(|e| format!("--dst-ip: {e}"))?,
            "--dst-mac" => {
                let m: MacAddr = value()?.parse().map_err(|e| format!("--dst-mac: {e:?}"))?;
                dst_mac = m.0;
            }
            "--seconds" => seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--rx" => rx = true,
            "--audit-dir" => audit_dir = Some(PathBuf::from(value()?)),
            "--slice" => slice = Some(value()?),
            "--sliver" => sliver = Some(value()?),
            "--ip" => ip = Some(value()?.parse().map_err(|e| format!("--ip: {e}"))?),
            "--deny-dst" => {
                deny_dst.push(value()?.parse().map_err(|e| format!("--deny-dst: {e}"))?)
            }
            "--spoof-every" => {
                spoof_every = value()?
                    .parse()
                    .map_err(|e| format!("--spoof-every: {e}"))?
            }
            "--offer-bps" => {
                offer_bps = Some(value()?.parse().map_err(|e| format!("--offer-bps: {e}"))?)
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !(60..=9000).contains(&frame) {
        return Err(format!("--frame {frame}: must be 60..=9000 bytes"));
    }
    let ledger = match (ledger, slot) {
        (Some(l), Some(s)) => Some((l, s)),
        (None, None) => None,
        _ => return Err("--ledger and --slot go together".into()),
    };
    Ok(Args {
        tap: tap.ok_or("--tap is required")?,
        ledger,
        frame,
        src_ip,
        dst_ip,
        dst_mac,
        seconds,
        offer_bps,
        audit: match (audit_dir, slice, sliver) {
            (Some(d), Some(s), Some(n)) => Some((d, s, n)),
            (None, None, None) => None,
            _ => return Err("--audit-dir, --slice and --sliver go together".into()),
        },
        ip,
        deny_dst,
        spoof_every,
        rx,
    })
}

/// virtio header + an Ethernet/IPv4/UDP frame of `len` bytes from `src` to `dst` at `dst_mac`
/// (by default a MAC that is not the host's, so the host drops it after counting it on the
/// TAP; the TAP's own MAC to have the host route it).
fn frame(len: usize, src: Ipv4Addr, dst: Ipv4Addr, dst_mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; devices::virtio::net::VNET_HDR_LEN];
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&[0x02, 0x5e, 0, 0, 0, 0x02]); // src MAC
    f.extend_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    let udp_len = ip_len - 20;
    f.extend_from_slice(&[0x30, 0x39, 0x30, 0x39]);
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.resize(devices::virtio::net::VNET_HDR_LEN + len, 0xab);
    f
}

fn cpu_ms() -> f64 {
    vmm::clock::clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID) as f64 / 1e6
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sliver_loadgen: {e}");
            std::process::exit(2);
        }
    };
    let tap = Tap::open(&args.tap).unwrap_or_else(|e| {
        eprintln!("sliver_loadgen: TAP {}: {e}", args.tap);
        std::process::exit(1)
    });
    let mac = [0x02, 0x5e, 0, 0, 0, 2];
    let mut stages = Stages::default();
    if let Some((dir, slice, sliver)) = &args.audit {
        let identity = Identity {
            slice: slice.clone(),
            sliver: sliver.clone(),
        };
        let audit =
            SliverAudit::open(dir, identity, &CaptureConfig::default()).unwrap_or_else(|e| {
                eprintln!("sliver_loadgen: {e}");
                std::process::exit(1)
            });
        stages.anti_spoofing = Some(AntiSpoofing {
            mac,
            ipv4: args.ip,
            deny_dst: args.deny_dst.clone(),
        });
        stages.audit = Some(AuditStage::new(
            FlowConfig::default(),
            Box::new(NicSink::new(audit, 0)),
            true,
        ));
    }
    if let Some((path, slot)) = &args.ledger {
        let ledger = Arc::new(vmm::ledger::Ledger::open(path).unwrap_or_else(|e| {
            eprintln!("sliver_loadgen: {e}");
            std::process::exit(1)
        }));
        let source = vmm::slot_rate::SlotRate::new(ledger, *slot).unwrap_or_else(|e| {
            eprintln!("sliver_loadgen: {e}");
            std::process::exit(1)
        });
        stages.shaper = Some(Arc::new(Shaper::new(Box::new(source))));
    } else if let Some(bps) = args.offer_bps {
        let fixed = Arc::new(FixedRate {
            rates: [Some(bps / 8), None],
            ..Default::default()
        });
        stages.shaper = Some(Arc::new(Shaper::new(Box::new(fixed))));
    }
    let device = NetDevice::new(tap, MacAddr(mac), stages).expect("device");
    let dev: Dev = Arc::new(Mutex::new(device));
    let counters = dev.lock().expect("device").counters();
    let mut em = EventManager::<Dev>::new().expect("event manager");
    em.add_subscriber(dev.clone());
    let mut driver = GuestDriver::new(dev);
    driver.init(feature(VERSION_1) | feature(F_MAC), 2, QUEUE_SIZE);
    let txq = TX_QUEUE as u16;
    let f = frame(args.frame, args.src_ip, args.dst_ip, args.dst_mac);
    let spoofed = frame(
        args.frame,
        Ipv4Addr::from(u32::from(args.src_ip).wrapping_add(1)),
        args.dst_ip,
        args.dst_mac,
    );
    let spoof_every = args.spoof_every;
    let pick = |n: u64| {
        if spoof_every > 0 && n.is_multiple_of(spoof_every) {
            &spoofed
        } else {
            &f
        }
    };
    // With --rx the "guest" keeps its RX ring full of empty buffers instead (a guest that
    // receives as fast as it is allowed).
    let (queue, rx_buffer) = if args.rx {
        (RX_QUEUE as u16, Some(2048u32))
    } else {
        (txq, None)
    };
    let mut posted = 0u64;
    let mut post = |driver: &mut GuestDriver| {
        posted += 1;
        match rx_buffer {
            Some(len) => driver.add_buffer(queue, None, len),
            None => driver.add_buffer(queue, Some(pick(posted)), 0),
        };
    };
    for _ in 0..QUEUE_SIZE {
        post(&mut driver);
    }
    driver.kick(queue);
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).expect("signal handler");
    }
    let start = Instant::now();
    let cpu0 = cpu_ms();
    let end = Duration::from_secs_f64(args.seconds.min(1e6));
    while start.elapsed() < end && !stop.load(Ordering::Relaxed) {
        // EINTR (a signal) comes back as an error: just look at the flag again.
        let _ = em.run_with_timeout(100);
        let n = driver.take_used(queue).len();
        for _ in 0..n {
            post(&mut driver);
        }
        if n > 0 {
            driver.kick(queue);
        }
    }
    let c = counters.snapshot();
    let (bytes, packets) = if args.rx {
        (c.rx_bytes, c.rx_packets)
    } else {
        (c.tx_bytes, c.tx_packets)
    };
    println!(
        "{{\"bytes\":{},\"packets\":{},\"cpu_ms\":{:.1},\"secs\":{:.3}}}",
        bytes,
        packets,
        cpu_ms() - cpu0,
        start.elapsed().as_secs_f64()
    );
}
