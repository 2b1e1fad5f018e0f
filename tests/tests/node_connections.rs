//! The control socket against clients that are slow, stalled or idle, and against many of
//! them at once: each kind of connection from the report is closed in time, and while other
//! users hold more connections than the daemon serves, root still gets answers.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::daemon::{request, Daemon};

const HOLDER: &str = env!("CARGO_BIN_EXE_conn_holder");
/// The uid other users' clients run as (`nobody`); the socket's group lets them in.
const OTHER_UID: &str = "65534";
const READ_TIMEOUT_S: u64 = 2;

fn start(dir: &Path, extra: &[&str]) -> Daemon {
    // Other users must reach the socket inside the test's directory.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let timeouts = [
        "--read-timeout",
        &READ_TIMEOUT_S.to_string(),
        "--socket-group",
        OTHER_UID,
    ]
    .map(str::to_string);
    let mut args: Vec<&str> = timeouts.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    Daemon::start_with(
        dir,
        std::sync::Arc::new(e2e::netns::NetNs::new("svconn")),
        &args,
    )
}

/// Seconds until the daemon closes `s` (reading and keeping what it sends), at most 20 s.
fn seconds_until_closed(s: &mut UnixStream, got: &mut Vec<u8>) -> f64 {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed().as_secs_f64(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn connect(d: &Daemon) -> UnixStream {
    UnixStream::connect(&d.socket).expect("connect")
}

#[test]
fn stalled_and_idle_connections_are_closed_in_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = start(dir.path(), &[]);
    let read = READ_TIMEOUT_S as f64;
    // All at once, so the test takes as long as the slowest.
    let nothing = connect(&d);
    let mut half_head = connect(&d);
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\nAccept: */")
        .expect("write");
    let mut slow_body = connect(&d);
    slow_body
        .write_all(
            b"PUT /slivers/s1 HTTP/1.1\r\nHost: node\r\nContent-Length: 100\r\n\r\n{\"vref\"",
        )
        .expect("write");
    let mut keep_alive = connect(&d);
    keep_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
        .expect("write");
    let threads: Vec<_> = [
        ("nothing", nothing.try_clone()),
        ("half head", half_head.try_clone()),
        ("slow body", slow_body.try_clone()),
        ("keep-alive", keep_alive.try_clone()),
    ]
    .into_iter()
    .map(|(what, s)| {
        let mut s = s.expect("clone");
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let secs = seconds_until_closed(&mut s, &mut got);
            (what, secs, String::from_utf8_lossy(&got).into_owned())
        })
    })
    .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("reader"))
        .collect();
    for (what, secs, got) in &results {
        eprintln!(
            "{what}: closed after {secs:.2} s; got {:?}",
            got.lines().next()
        );
    }
    let get = |name: &str| results.iter().find(|r| r.0 == name).expect("result");
    // A head must arrive within the read timeout of the connection's start or the last
    // response.
    for what in ["nothing", "half head", "keep-alive"] {
        let secs = get(what).1;
        assert!(
            secs >= read - 0.5 && secs <= read + 1.5,
            "{what}: {secs:.2} s"
        );
    }
    // A body must arrive within the read timeout after its head: 408, then closed.
    let (_, secs, got) = get("slow body");
    assert!(got.starts_with("HTTP/1.1 408 "), "{got}");
    assert!(
        got.contains("request body: not received within 2 s"),
        "{got}"
    );
    assert!(
        *secs >= read - 0.5 && *secs <= read + 1.5,
        "slow body: {secs:.2} s"
    );
    assert!(
        get("keep-alive").2.starts_with("HTTP/1.1 200 "),
        "one request answered"
    );
    drop([nothing, half_head, slow_body, keep_alive]);
    // Heads over the limits: 431 (RFC 6585), the daemon goes on.
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(20 * 1024));
    for (what, headers) in [("150 fields", many), ("a 20 KiB field", big)] {
        let mut s = connect(&d);
        let head = format!("GET /healthz HTTP/1.1\r\nHost: node\r\n{headers}\r\n");
        let _ = s.write_all(head.as_bytes());
        let mut got = Vec::new();
        seconds_until_closed(&mut s, &mut got);
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 431 "), "{what}: {got}");
    }
    assert_eq!(request(&d.socket, "GET", "/healthz", None).status, 200);
    d.stop();
}

/// A `conn_holder` run as another user.
struct Holder {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Holder {
    fn spawn(socket: &Path, n: usize) -> Self {
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={OTHER_UID}"),
                &format!("--regid={OTHER_UID}"),
                "--clear-groups",
                HOLDER,
            ])
            .arg(socket)
            .arg(n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux) running conn_holder");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("holder output");
        assert_eq!(
            line.trim(),
            format!("open {n}"),
            "the kernel took every connection"
        );
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// (connections the daemon closed, of which answered 503).
    fn closed(&mut self) -> (usize, usize) {
        writeln!(self.stdin, "count").expect("ask holder");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("holder answer");
        let mut words = line
            .split_whitespace()
            .skip(1)
            .map(|w| w.parse().expect("count"));
        (words.next().expect("closed"), words.next().expect("503"))
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status code of `GET /healthz` by curl run as the other user.
fn curl_as_other_user(socket: &Path) -> String {
    let out = Command::new("setpriv")
        .args([
            &format!("--reuid={OTHER_UID}"),
            &format!("--regid={OTHER_UID}"),
            "--clear-groups",
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .arg("http://node/healthz")
        .output()
        .expect("curl");
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    if code == "000" {
        eprintln!("curl: {}", String::from_utf8_lossy(&out.stderr));
    }
    code
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("daemon fds")
        .count()
}

/// Poll `f` every 50 ms until it holds, for at most `secs` seconds.
fn eventually(secs: f64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn other_users_cannot_take_every_connection_from_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The default cap: 1024 connections for anyone with this host's open-file limit.
    let d = start(dir.path(), &[]);
    // The line comes once start-up's reconcile is done (the socket is bound before).
    assert!(
        eventually(5.0, || e2e::daemon::daemon_log(dir.path())
            .contains("at most 1024 connections (+16 for root)")),
        "{}",
        e2e::daemon::daemon_log(dir.path())
    );
    let base_fds = open_fds(d.pid());
    // Two clients of another user hold 700 idle connections each: 1 400 > 1 024.
    let mut a = Holder::spawn(&d.socket, 700);
    let mut b = Holder::spawn(&d.socket, 700);
    assert!(
        eventually(5.0, || {
            let (ca, ra) = a.closed();
            let (cb, rb) = b.closed();
            ca + cb == 1400 - 1024 && ra + rb == 1400 - 1024
        }),
        "376 connections past the cap get a 503 and are closed: {:?} {:?}",
        a.closed(),
        b.closed()
    );
    // Refused connections linger up to a second for their clients to finish sending.
    assert!(
        eventually(2.0, || open_fds(d.pid()) <= base_fds + 1024 + 4),
        "{} descriptors open (was {base_fds})",
        open_fds(d.pid())
    );
    let fds = open_fds(d.pid());
    // Root still gets answers, within the reserve, while the others' connections are held.
    let start = Instant::now();
    let r = request(&d.socket, "GET", "/healthz", None);
    let root_ms = start.elapsed().as_millis();
    assert_eq!(r.status, 200);
    eprintln!("1 400 held by uid {OTHER_UID}: root's /healthz in {root_ms} ms, daemon fds {fds}");
    // Another user's new connection is refused with 503 while the cap is reached.
    assert_eq!(curl_as_other_user(&d.socket), "503");
    // The held connections are idle: the daemon closes them, and serves everyone again.
    assert!(
        eventually(READ_TIMEOUT_S as f64 + 3.0, || a.closed().0 + b.closed().0
            == 1400),
        "idle connections closed: {:?} {:?}",
        a.closed(),
        b.closed()
    );
    assert!(
        eventually(2.0, || open_fds(d.pid()) <= base_fds + 2),
        "descriptors back to {base_fds}: {}",
        open_fds(d.pid())
    );
    assert_eq!(curl_as_other_user(&d.socket), "200");
    d.stop();
}

#[test]
fn shutdown_lets_the_request_in_hand_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A guest that never powers off: a stop waits the whole --guest-stop-timeout (3 s, longer
    // than the 2 s read timeout), then SIGTERMs the VMM.
    let halt = e2e::tiny_guest::Program::new()
        .halt_forever()
        .write_elf(dir.path(), "halt.elf");
    let d = start(dir.path(), &["--guest-stop-timeout", "3"]);
    let spec = serde_json::json!({"slice": "s", "kernel": halt, "mem_mib": 16});
    assert_eq!(d.call("PUT", "/slivers/a", Some(spec)).status, 201);
    assert_eq!(d.call("POST", "/slivers/a/start", None).status, 200);
    let idle = connect(&d);
    let socket = d.socket.clone();
    let stopping = std::thread::spawn(move || {
        let started = Instant::now();
        let r = request(&socket, "POST", "/slivers/a/stop", None);
        (r, started.elapsed().as_secs_f64())
    });
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM while the stop is in flight and another connection sits idle.
    let log = d.stop();
    let (r, secs) = stopping.join().expect("stop client");
    assert_eq!(r.status, 200, "the stop was answered: {r:?}");
    assert!(secs >= 2.5, "it waited for the guest: {secs:.2} s");
    drop(idle);
    assert!(!log.contains("still open after"), "{log}");
}
