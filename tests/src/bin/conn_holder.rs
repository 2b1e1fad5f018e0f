//! Holds connections to a unix socket, as an idle or stalled client would, for the daemon's
//! connection tests (run as another user with `setpriv`).
//!
//! `conn_holder SOCKET N [PREFIX]` opens N connections (writing PREFIX on each, if given),
//! prints `open N`, then answers each line on stdin with `closed K SERVICE_UNAVAILABLE`: how
//! many connections the server has closed and how many of those got a 503 first. Exits when
//! stdin closes.

use std::io::{BufRead, Read, Write};
use std::os::unix::net::UnixStream;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(socket), Some(n)) = (args.get(1), args.get(2).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: conn_holder SOCKET N [PREFIX]");
        std::process::exit(2);
    };
    let prefix = args.get(3).map(String::as_bytes).unwrap_or_default();
    let mut conns: Vec<(UnixStream, Vec<u8>, bool)> = Vec::with_capacity(n);
    for i in 0..n {
        match UnixStream::connect(socket) {
            Ok(mut s) => {
                if !prefix.is_empty() {
                    let _ = s.write_all(prefix);
                }
                s.set_nonblocking(true).expect("nonblocking");
                conns.push((s, Vec::new(), false));
            }
            Err(e) => {
                eprintln!("connection {i}: {e}");
                break;
            }
        }
    }
    println!("open {}", conns.len());
    let stdin = std::io::stdin();
    for _ in stdin.lock().lines().map_while(Result::ok) {
        for (s, got, closed) in conns.iter_mut().filter(|c| !c.2) {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        *closed = true;
                        break;
                    }
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *closed = true;
                        break;
                    }
                }
            }
        }
        let closed = conns.iter().filter(|c| c.2).count();
        let refused = conns
            .iter()
            .filter(|c| c.1.starts_with(b"HTTP/1.1 503 "))
            .count();
        println!("closed {closed} {refused}");
    }
}
