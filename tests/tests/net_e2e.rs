//! End-to-end networking with the real Linux guest: `ip=` configures eth0, the guest pings the
//! host TAP address and the host pings the guest, and TCP transfers in both directions arrive
//! with the bytes checked. Everything happens inside a network namespace this test creates.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::guest::{artifacts, boot_lock, LINUX_BOOT_TIMEOUT};
use e2e::netns::NetNs;
use e2e::run::{slicevisor_bin, wait_with_timeout, ChildGuard};

const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const SEQ_MAX: u32 = 20_000;

fn seq_text(max: u32) -> String {
    (1..=max).map(|i| format!("{i}\n")).collect()
}

fn md5_hex(data: &[u8]) -> String {
    let mut child = std::process::Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("md5sum (coreutils)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("hash")
        .to_string()
}

#[test]
fn guest_and_host_ping_and_move_tcp_data_both_ways() {
    let (kernel, initrd) = artifacts();
    let _one_at_a_time = boot_lock();
    let ns = NetNs::new("svnet");
    ns.add_tap("svtap0", &format!("{HOST_IP}/24"));
    let listener = ns.run_in(|| TcpListener::bind((HOST_IP, 5001)).expect("bind in netns"));
    listener.set_nonblocking(true).expect("nonblocking");

    let guest_cmd = format!(
        "ping -c 3 {HOST_IP} && seq 1 {SEQ_MAX} | nc {HOST_IP} 5001 && nc -l -p 5002 > /tmp/in && echo RX-SUM $(md5sum < /tmp/in)"
    );
    let child = ChildGuard::new(
        ns.command(slicevisor_bin())
            .args(["run", "--kernel"])
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initrd)
            .args([
                "--mem-mib",
                "256",
                "--net",
                "tap=svtap0,mac=02:00:00:77:00:02",
            ])
            .arg("--cmdline")
            .arg(format!("ip={GUEST_IP}/24 sliver_cmd=\"{guest_cmd}\""))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn slicevisor in netns"),
    );
    let start = Instant::now();

    // Guest -> host TCP: the guest connects once booted and has pinged us.
    let mut conn = loop {
        match listener.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    start.elapsed() < LINUX_BOOT_TIMEOUT,
                    "guest never connected"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut got = String::new();
    conn.read_to_string(&mut got).expect("read guest data");
    // Close our side too: busybox nc exits only when both directions are done.
    drop(conn);
    assert_eq!(got.len(), seq_text(SEQ_MAX).len(), "guest->host byte count");
    assert!(got == seq_text(SEQ_MAX), "guest->host bytes differ");
    eprintln!(
        "guest->host TCP ({} bytes) done at {:.1} s",
        got.len(),
        start.elapsed().as_secs_f64()
    );

    // Host -> guest ICMP.
    let ping = ns
        .command("ping")
        .args(["-c", "2", "-W", "5", GUEST_IP])
        .output()
        .expect("ping");
    assert!(
        ping.status.success(),
        "host ping guest: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    // Host -> guest TCP: the guest is listening (or about to).
    let payload: Vec<u8> = (0..150_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let sent = payload.clone();
    ns.run_in(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut s = loop {
            match TcpStream::connect((GUEST_IP, 5002)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "guest never listened: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        };
        s.write_all(&sent).expect("send to guest");
    });

    let out = wait_with_timeout(
        child.take(),
        LINUX_BOOT_TIMEOUT.saturating_sub(start.elapsed()),
    );
    eprintln!("whole run {:.1} s", start.elapsed().as_secs_f64());
    assert_eq!(out.code(), 0, "{out:?}");
    assert!(
        out.stdout
            .contains("3 packets transmitted, 3 packets received"),
        "guest ping:\n{}",
        out.stdout
    );
    let want = format!("RX-SUM {}", md5_hex(&payload));
    assert!(
        out.stdout.contains(&want),
        "want {want:?} in:\n{}",
        out.stdout
    );
    assert!(out.stdout.contains("SLIVER-CMD-EXIT 0"), "{}", out.stdout);
    let counters = out
        .stderr
        .lines()
        .find(|l| l.contains("net0 (tap svtap0)"))
        .unwrap_or_else(|| panic!("no counters line: {}", out.stderr));
    assert!(counters.contains("0 malformed chains"), "{counters}");
}
