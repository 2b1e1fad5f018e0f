//! Guest → host TCP throughput with the real Linux guest, with the virtio-net offloads
//! (checksum, TSO, mergeable buffers) and without them (`--net ...,offloads=off`), the same
//! transfer one after the other on one TAP in a namespace of its own.
//!
//! The guest writes an N MiB file into its tmpfs and serves it with busybox `httpd` (which
//! sends it with `sendfile(2)`, so the guest's TCP hands its driver large segments when TSO
//! is on); the host fetches it with one HTTP/1.0 GET, counts the body's bytes from the
//! first to the last and prints Mbit/s. The guest prints the feature bits its driver
//! negotiated (`/sys/class/net/eth0/device/features`, bit 0 first). busybox `nc` is no use
//! here: it writes 1 KiB at a time, and each write leaves as its own segment.
//!
//! Run (root, /dev/kvm): `cargo build --release --workspace --bins && target/release/guest_tcp [MIB]`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::guest::{artifacts, LINUX_BOOT_TIMEOUT};
use e2e::netns::NetNs;
use e2e::run::{slicevisor_bin, ChildGuard};

const HOST_IP: &str = "10.81.0.1";
const GUEST_IP: &str = "10.81.0.2";

/// One transfer of `mib` MiB; returns (Mbit/s, the guest's negotiated feature string).
fn transfer(ns: &NetNs, offloads: &str, mib: u32) -> (f64, String) {
    let (kernel, initrd) = artifacts();
    let guest_cmd = format!(
        "echo FEATURES $(cat /sys/class/net/eth0/device/features) && dd if=/dev/zero of=/tmp/f bs=1048576 count={mib} 2>/dev/null && httpd -f -p 8080 -h /tmp"
    );
    let mut vmm = ns
        .command(slicevisor_bin())
        .args(["run", "--kernel"])
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--mem-mib", "256", "--net"])
        .arg(format!(
            "tap=svgt0,mac=02:00:00:81:00:02,offloads={offloads}"
        ))
        .arg("--cmdline")
        .arg(format!("ip={GUEST_IP}/24 sliver_cmd=\"{guest_cmd}\""))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn slicevisor in netns");
    let stdout = vmm.stdout.take().expect("guest console");
    let child = ChildGuard::new(vmm);
    let features = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // The guest's line, not the kernel's echo of its command line.
            .find_map(|l| {
                let bits = l.split("FEATURES ").nth(1)?;
                bits.starts_with(['0', '1']).then(|| bits.trim().to_string())
            })
            .unwrap_or_default()
    });
    let deadline = Instant::now() + LINUX_BOOT_TIMEOUT;
    let body = mib as usize * (1 << 20);
    let (got, start) = ns.run_in(move || {
        let mut conn = loop {
            if let Ok(mut c) = TcpStream::connect((GUEST_IP, 8080)) {
                c.write_all(b"GET /f HTTP/1.0\r\n\r\n").expect("request");
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "the guest's httpd never answered"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        conn.set_read_timeout(Some(LINUX_BOOT_TIMEOUT))
            .expect("timeout");
        let mut buf = vec![0u8; 1 << 20];
        let mut head = Vec::new();
        // The response head; the clock starts at the first body bytes.
        let mut got = loop {
            let n = conn.read(&mut buf).expect("response");
            assert!(
                n > 0,
                "httpd closed early: {}",
                String::from_utf8_lossy(&head)
            );
            head.extend_from_slice(&buf[..n]);
            if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break head.len() - at - 4;
            }
        };
        let start = Instant::now();
        loop {
            match conn.read(&mut buf).expect("read") {
                0 => break,
                n => got += n,
            }
        }
        (got, start)
    });
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, body, "bytes from the guest");
    drop(child);
    let features = features.join().unwrap_or_default();
    (got as f64 * 8.0 / secs / 1e6, features)
}

fn main() {
    let mib: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("MIB must be a number"))
        .unwrap_or(64);
    let ns = NetNs::new("svguesttcp");
    ns.add_tap("svgt0", &format!("{HOST_IP}/24"));
    println!(
        "guest -> host TCP, {mib} MiB per transfer (real Linux guest, busybox httpd, one GET)"
    );
    for offloads in ["on", "off", "on", "off"] {
        let t = Instant::now();
        let (mbps, features) = transfer(&ns, offloads, mib);
        println!(
            "offloads={offloads:<3} {mbps:>9.1} Mbit/s  (run {:.0} s; guest features {features})",
            t.elapsed().as_secs_f64()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
