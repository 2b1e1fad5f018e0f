//! The guest's serial console outside the VMM: where its output goes, and who may type.
//!
//! Output goes to stdout, or, with `--console-log PATH`, to a bounded log: `PATH` up to
//! [`LOG_ROTATE_BYTES`], then renamed to `PATH.1` (replacing the last one) and started anew,
//! so it never takes more than twice that. With `--console-socket PATH` the VMM also listens
//! on a unix socket: every client gets the output from then on; a client's first byte says
//! what it is, [`MODE_WRITE`] (it types: its bytes go to the guest's console input) or
//! [`MODE_READ`] (it watches). One client types at a time; a second one asking to is told
//! so and watches.
//!
//! The guest writes COM1 on a vCPU thread, which puts the bytes in an outbox ([`ConsoleOut`];
//! without a log it also writes them to stdout, inherited by every thread); the event loop
//! writes them on to the log and the clients ([`ConsoleDrain`]), and opens the log itself. So
//! every descriptor the console opens lives on the event loop's thread alone, and the vCPU
//! threads can have descriptor tables of their own (`crate::fd_table`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use devices::legacy::SerialDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// A console log is rotated when it reaches this size (1 MiB).
pub const LOG_ROTATE_BYTES: u64 = 1 << 20;
/// First byte of a client that types.
pub const MODE_WRITE: u8 = b'w';
/// First byte of a client that watches.
pub const MODE_READ: u8 = b'r';
/// Most clients at once.
const MAX_CLIENTS: usize = 16;

/// A connected console client.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    /// `None` until its first byte came.
    writer: Option<bool>,
}

/// Most bytes the outbox holds for the event loop (1 MiB); more are dropped and counted.
pub const OUTBOX_BYTES: usize = 1 << 20;

/// A log file that rotates at [`LOG_ROTATE_BYTES`].
#[derive(Debug)]
struct RotatingLog {
    path: PathBuf,
    file: File,
    len: u64,
}

impl RotatingLog {
    fn open(path: &Path) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.len + bytes.len() as u64 > LOG_ROTATE_BYTES && self.len > 0 {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, &old)?;
            self.file = File::options().create(true).append(true).open(&self.path)?;
            self.len = 0;
        }
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// Console output on its way from the vCPU that writes COM1 to the event loop.
#[derive(Debug)]
struct Outbox {
    bytes: Mutex<Vec<u8>>,
    /// Written when `bytes` stops being empty: the event loop drains it.
    ready: EventFd,
    /// Bytes dropped because the outbox was full (the event loop fell behind).
    lost: AtomicU64,
}

/// The guest console's output as COM1 writes it (on a vCPU thread): into the outbox, never
/// waiting, touching no descriptor but the outbox's eventfd; without a console log, also to
/// stdout (inherited, so in every thread's table), which a slow reader may make it wait for,
/// as a serial line would, without stopping the event loop.
#[derive(Debug)]
pub struct ConsoleOut {
    outbox: Arc<Outbox>,
    stdout: bool,
    /// Whether anything drains the outbox (a log or a console socket).
    drained: bool,
}

/// Where the event loop writes the output: the bounded log (if any) and every socket client.
#[derive(Debug)]
struct Sinks {
    log: Option<LogFile>,
    clients: Vec<Client>,
}

/// The console log: its path until the event loop first writes it, then the open file. It is
/// opened there, after the vCPU threads have copied their descriptor tables, so that theirs
/// never hold it (a rotated-away log would stay on disk until the VMM ends).
#[derive(Debug)]
enum LogFile {
    Closed(PathBuf),
    Open(RotatingLog),
}

/// The event loop's side of the console output: drains the outbox into the log and the
/// clients. An event-loop subscriber; clones share one outbox and one set of sinks.
#[derive(Debug, Clone)]
pub struct ConsoleDrain {
    outbox: Arc<Outbox>,
    sinks: Arc<Mutex<Sinks>>,
}

impl ConsoleOut {
    /// Output to `log` (a bounded log file) or, without one, stdout, and with `socket` to
    /// console clients: the writing end, and the end that drains it (to the log and the
    /// clients).
    ///
    /// # Errors
    /// The log file cannot be opened (checked now; it is opened for good by the event loop),
    /// or the outbox's eventfd made.
    pub fn new(log: Option<&Path>, socket: bool) -> io::Result<(Self, ConsoleDrain)> {
        if let Some(path) = log {
            drop(RotatingLog::open(path)?);
        }
        let outbox = Arc::new(Outbox {
            bytes: Mutex::new(Vec::new()),
            ready: EventFd::new(libc::EFD_NONBLOCK)?,
            lost: AtomicU64::new(0),
        });
        let sinks = Sinks {
            log: log.map(|p| LogFile::Closed(p.to_path_buf())),
            clients: Vec::new(),
        };
        let drain = ConsoleDrain {
            outbox: outbox.clone(),
            sinks: Arc::new(Mutex::new(sinks)),
        };
        let out = Self {
            outbox,
            stdout: log.is_none(),
            drained: log.is_some() || socket,
        };
        Ok((out, drain))
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.stdout {
            let mut out = io::stdout().lock();
            let _ = out.write_all(buf);
            let _ = out.flush();
        }
        if !self.drained {
            return Ok(buf.len());
        }
        let outbox = &self.outbox;
        let mut bytes = outbox.bytes.lock().unwrap_or_else(|p| p.into_inner());
        if bytes.len() + buf.len() > OUTBOX_BYTES {
            outbox.lost.fetch_add(buf.len() as u64, Ordering::Relaxed);
            return Ok(buf.len());
        }
        let was_empty = bytes.is_empty();
        bytes.extend_from_slice(buf);
        drop(bytes);
        if was_empty {
            // Nonblocking: a full counter only means the event loop has yet to look.
            let _ = outbox.ready.write(1);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ConsoleDrain {
    fn sinks(&self) -> MutexGuard<'_, Sinks> {
        self.sinks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write what the outbox holds to the log and every client. The event loop does this when
    /// the outbox's eventfd fires (with `ops`, to stop watching the clients it drops), and
    /// the VMM once more after the vCPUs have stopped, so that the guest's last words are kept.
    pub fn drain(&self, mut ops: Option<&mut EventOps>) {
        let bytes =
            std::mem::take(&mut *self.outbox.bytes.lock().unwrap_or_else(|p| p.into_inner()));
        let lost = self.outbox.lost.swap(0, Ordering::Relaxed);
        if lost > 0 {
            log::warn!("console: {lost} bytes of output dropped (the event loop fell behind)");
        }
        if bytes.is_empty() {
            return;
        }
        let mut sinks = self.sinks();
        if let Some(LogFile::Closed(path)) = &sinks.log {
            sinks.log = match RotatingLog::open(path) {
                Ok(log) => Some(LogFile::Open(log)),
                Err(e) => {
                    log::warn!("console log {}: {e}; its output is dropped", path.display());
                    None
                }
            };
        }
        if let Some(LogFile::Open(log)) = &mut sinks.log {
            if let Err(e) = log.write_all(&bytes) {
                log::debug!("console log: {e}");
            }
        }
        // A client that cannot take the output now (or is gone) is dropped: the guest's
        // console never waits for a reader.
        let clients = &mut sinks.clients;
        let mut i = 0;
        while i < clients.len() {
            let c = &mut clients[i];
            if c.writer.is_none() || c.stream.write_all(&bytes).is_ok() {
                i += 1;
            } else {
                drop_client(clients, i, ops.as_deref_mut());
            }
        }
    }
}

/// Drop client `i`: it leaves the event loop (when `ops` is given) before its descriptor
/// closes, so that a later client given the same number can be watched.
fn drop_client(clients: &mut Vec<Client>, i: usize, ops: Option<&mut EventOps>) {
    let gone = clients.remove(i);
    if let Some(ops) = ops {
        let _ = ops.remove(Events::new(&gone.stream, EventSet::IN));
    }
}

impl MutEventSubscriber for ConsoleDrain {
    fn process(&mut self, _events: Events, ops: &mut EventOps) {
        // The count does not matter; a failed read (EAGAIN) means another drain took it.
        let _ = self.outbox.ready.read();
        self.drain(Some(ops));
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.outbox.ready, EventSet::IN)) {
            log::error!("console output eventfd: {e:?}");
        }
    }
}

/// The console socket: accepts clients and takes the typing client's bytes to the guest.
pub struct ConsoleSocket<W: Write + Send + 'static> {
    listener: UnixListener,
    path: PathBuf,
    drain: ConsoleDrain,
    serial: Arc<Mutex<SerialDevice<W>>>,
}

impl<W: Write + Send + 'static> std::fmt::Debug for ConsoleSocket<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Send + 'static> ConsoleSocket<W> {
    /// Listen on `path` (replacing a stale socket file) for the console whose output `drain`
    /// writes and whose input goes to `serial`.
    ///
    /// # Errors
    /// The socket cannot be made.
    pub fn bind(
        path: &Path,
        drain: ConsoleDrain,
        serial: Arc<Mutex<SerialDevice<W>>>,
    ) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            drain,
            serial,
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.drain.sinks().clients.len() >= MAX_CLIENTS {
                let mut s = stream;
                let _ = s.write_all(b"slicevisor: console: too many clients\r\n");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
                log::debug!("console client: {e:?}");
                continue;
            }
            self.drain.sinks().clients.push(Client {
                stream,
                writer: None,
            });
        }
    }

    /// Bytes from the client on `fd`: its mode first, then (a typing client's) input.
    fn read_client(&mut self, fd: i32, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        let mut sinks = self.drain.sinks();
        let clients = &mut sinks.clients;
        let Some(i) = clients.iter().position(|c| c.stream.as_raw_fd() == fd) else {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
            return;
        };
        let n = match clients[i].stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                drop_client(clients, i, Some(ops));
                return;
            }
            Ok(n) => n,
        };
        let mut input = &buf[..n];
        if clients[i].writer.is_none() {
            let wants = input[0] == MODE_WRITE;
            input = &input[1..];
            let taken = clients.iter().any(|c| c.writer == Some(true));
            let writer = wants && !taken;
            if wants && taken {
                let _ = clients[i]
                    .stream
                    .write_all(b"slicevisor: console: another client types; watching only\r\n");
            }
            clients[i].writer = Some(writer);
        }
        if clients[i].writer == Some(true) && !input.is_empty() {
            drop(sinks);
            let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = serial.enqueue_input(input) {
                log::debug!("console input: {e}");
            }
        }
    }
}

impl<W: Write + Send + 'static> MutEventSubscriber for ConsoleSocket<W> {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.listener.as_raw_fd() {
            self.accept(ops);
        } else {
            self.read_client(events.fd(), ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            log::error!("console socket {}: {e:?}", self.path.display());
        }
    }
}

impl<W: Write + Send + 'static> Drop for ConsoleSocket<W> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_and_stays_bounded() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.console");
        let (mut out, drain) = ConsoleOut::new(Some(&path), true).expect("log");
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..40 {
            out.write_all(&chunk).expect("write");
            drain.drain(None);
        }
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let rotated = dir.path().join("s.console.1");
        assert!(len(&path) <= LOG_ROTATE_BYTES);
        assert!(len(&rotated) <= LOG_ROTATE_BYTES && len(&rotated) > 0);
        assert_eq!((len(&path) + len(&rotated)) % (64 * 1024), 0);
    }

    /// The bug this layout fixes: a vCPU thread with a descriptor table of its own wrote to
    /// clients the event loop accepted afterwards, which its table did not have. Output
    /// written on such a thread reaches a client accepted after it unshared, and the log,
    /// through the drain; a full outbox drops and counts instead of waiting.
    #[test]
    fn output_from_a_thread_with_its_own_table_reaches_later_clients() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("s.console");
        let (mut out, drain) = ConsoleOut::new(Some(&path), true).expect("log");
        let (unshared_tx, unshared_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let vcpu = std::thread::spawn(move || {
            crate::fd_table::unshare();
            unshared_tx.send(()).expect("send");
            go_rx.recv().expect("go");
            out.write_all(b"login: ").expect("write");
            out.write_all(&vec![b'x'; OUTBOX_BYTES])
                .expect("a full outbox drops");
        });
        unshared_rx.recv().expect("unshared");
        // Accepted now, on this thread: the vCPU's table never had it.
        let (mut watcher, accepted) = UnixStream::pair().expect("pair");
        drain.sinks().clients.push(Client {
            stream: accepted,
            writer: Some(false),
        });
        go_tx.send(()).expect("go");
        vcpu.join().expect("vCPU thread");
        assert_eq!(
            drain.outbox.lost.load(Ordering::Relaxed),
            OUTBOX_BYTES as u64
        );
        drain.drain(None);
        assert_eq!(drain.sinks().clients.len(), 1, "the client is kept");
        let mut got = [0u8; 7];
        watcher.read_exact(&mut got).expect("client output");
        assert_eq!(&got, b"login: ");
        assert_eq!(std::fs::read(&path).expect("log"), b"login: ");
    }
}
