//! The guest's serial console outside the VMM: where its output goes, and who may type.
//!
//! Output goes to stdout, or, with `--console-log PATH`, to a bounded log: `PATH` up to
//! [`LOG_ROTATE_BYTES`], then renamed to `PATH.1` (replacing the last one) and started anew,
//! so it never takes more than twice that. With `--console-socket PATH` the VMM also listens
//! on a unix socket: every client gets the output from then on; a client's first byte says
//! what it is, [`MODE_WRITE`] (it types: its bytes go to the guest's console input) or
//! [`MODE_READ`] (it watches). One client types at a time; a second one asking to is told
//! so and watches.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use devices::legacy::SerialDevice;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

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

/// The clients, shared by the output side and the socket side.
type Clients = Arc<Mutex<Vec<Client>>>;

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

/// Where the console's output goes: stdout or a bounded log, and every socket client.
#[derive(Debug)]
pub struct ConsoleOut {
    log: Option<RotatingLog>,
    clients: Clients,
}

impl ConsoleOut {
    /// Output to `log` (a bounded log file) or, without one, stdout.
    ///
    /// # Errors
    /// The log file cannot be opened.
    pub fn new(log: Option<&Path>) -> io::Result<Self> {
        Ok(Self {
            log: log.map(RotatingLog::open).transpose()?,
            clients: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client list, for the [`ConsoleSocket`] that fills it.
    pub fn clone_clients(&self) -> ConsoleClients {
        ConsoleClients(self.clients.clone())
    }
}

/// The clients of a console's output (from [`ConsoleOut::clone_clients`]).
#[derive(Debug, Clone)]
pub struct ConsoleClients(Clients);

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.log {
            Some(log) => {
                if let Err(e) = log.write_all(buf) {
                    log::debug!("console log: {e}");
                }
            }
            None => {
                let mut out = io::stdout().lock();
                let _ = out.write_all(buf);
            }
        }
        // A client that cannot take the output now (or is gone) is dropped: the guest's
        // console never waits for a reader.
        self.clients()
            .retain_mut(|c| c.writer.is_none() || c.stream.write_all(buf).is_ok());
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.log {
            Some(log) => log.file.flush(),
            None => io::stdout().flush(),
        }
    }
}

/// The console socket: accepts clients and takes the typing client's bytes to the guest.
pub struct ConsoleSocket<W: Write + Send + 'static> {
    listener: UnixListener,
    path: PathBuf,
    clients: Clients,
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
    /// Listen on `path` (replacing a stale socket file) for the console whose output goes to
    /// `clients` and input to `serial`.
    ///
    /// # Errors
    /// The socket cannot be made.
    pub fn bind(
        path: &Path,
        clients: ConsoleClients,
        serial: Arc<Mutex<SerialDevice<W>>>,
    ) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            clients: clients.0,
            serial,
        })
    }

    fn clients(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn accept(&mut self, ops: &mut EventOps) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.clients().len() >= MAX_CLIENTS {
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
            self.clients().push(Client {
                stream,
                writer: None,
            });
        }
    }

    /// Bytes from the client on `fd`: its mode first, then (a typing client's) input.
    fn read_client(&mut self, fd: i32, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        let mut clients = self.clients();
        let Some(i) = clients.iter().position(|c| c.stream.as_raw_fd() == fd) else {
            let _ = ops.remove(Events::new_raw(fd, EventSet::IN));
            return;
        };
        let n = match clients[i].stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                let gone = clients.remove(i);
                let _ = ops.remove(Events::new(&gone.stream, EventSet::IN));
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
            drop(clients);
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
        let mut out = ConsoleOut::new(Some(&path)).expect("log");
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..40 {
            out.write_all(&chunk).expect("write");
        }
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let rotated = dir.path().join("s.console.1");
        assert!(len(&path) <= LOG_ROTATE_BYTES);
        assert!(len(&rotated) <= LOG_ROTATE_BYTES && len(&rotated) > 0);
        assert_eq!((len(&path) + len(&rotated)) % (64 * 1024), 0);
    }
}
