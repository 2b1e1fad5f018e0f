//! `slicevisor ctl console NAME`: attach to a running sliver's serial console through the
//! control socket (an HTTP upgrade; see `console_api.rs`). The terminal is put in raw mode;
//! Ctrl-] detaches. `--read-only` watches without typing. With stdin not a terminal (a
//! script), its bytes are typed as they come, and its end detaches.

use std::path::Path;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{connect, runtime, sliver_path};
use crate::console_api::UPGRADE;

/// Ctrl-]: the byte that detaches (as telnet's escape).
pub const DETACH: u8 = 0x1d;

/// The terminal's settings, put back when dropped.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal.
    fn enter() -> Self {
        // SAFETY: isatty, tcgetattr, cfmakeraw and tcsetattr on fd 0 with a termios we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return Self(None);
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return Self(None);
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            libc::tcsetattr(0, libc::TCSANOW, &raw);
            Self(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            // SAFETY: tcsetattr on fd 0 with the settings read at entry.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, saved) };
        }
    }
}

async fn session(socket: &Path, name: &str, read_only: bool) -> Result<(), String> {
    let path = sliver_path(name, "/console/attach").map_err(|e| e.to_string())?;
    let mode = if read_only { "ro" } else { "rw" };
    let stream = connect(socket).await.map_err(|e| format!("--socket {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("--socket {}: handshake: {e}", socket.display()))?;
    tokio::spawn(conn.with_upgrades());
    let request = hyper::Request::builder()
        .method("POST")
        .uri(format!("{path}?mode={mode}"))
        .header(hyper::header::HOST, "node")
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::UPGRADE, UPGRADE)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("--socket {}: {e}", socket.display()))?;
    if response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(format!(
            "{status} {}",
            v["error"]
                .as_str()
                .unwrap_or(&String::from_utf8_lossy(&body))
        ));
    }
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| format!("console upgrade: {e}"))?;
    let (mut from_vm, mut to_vm) = tokio::io::split(TokioIo::new(upgraded));
    eprint!("slicevisor: console of {name} ({mode}); Ctrl-] detaches\r\n");
    let _raw = RawTerminal::enter();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let (mut inbuf, mut outbuf) = ([0u8; 1024], [0u8; 4096]);
    loop {
        tokio::select! {
            n = stdin.read(&mut inbuf) => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    break;
                }
                let typed = &inbuf[..n];
                let (keys, detach) = match typed.iter().position(|&b| b == DETACH) {
                    Some(i) => (&typed[..i], true),
                    None => (typed, false),
                };
                if !read_only && !keys.is_empty() && to_vm.write_all(keys).await.is_err() {
                    break;
                }
                if detach {
                    break;
                }
            }
            n = from_vm.read(&mut outbuf) => {
                let n = n.unwrap_or(0);
                if n == 0 {
                    eprint!("\r\nslicevisor: the console closed (the sliver stopped?)\r\n");
                    break;
                }
                if stdout.write_all(&outbuf[..n]).await.is_err() {
                    break;
                }
                let _ = stdout.flush().await;
            }
        }
    }
    Ok(())
}

/// Attach to sliver `name`'s console; returns the exit code (0 detached, 1 error).
pub fn run(socket: &Path, name: &str, read_only: bool) -> i32 {
    let result = runtime(socket)
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(session(socket, name, read_only)));
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("slicevisor: error: {e}");
            1
        }
    }
}
