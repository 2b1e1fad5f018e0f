//! Why a VM ended, and the one place that records it: the first reason wins.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Process exit code for setup errors (bad flags, unreadable kernel, no KVM).
pub const EXIT_SETUP_ERROR: i32 = 1;
/// Process exit code when a seccomp filter refused a system call (the reason names it; see
/// [`crate::seccomp`]).
pub const EXIT_SECCOMP: i32 = 6;

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off (reboot through the i8042, or a KVM shutdown/reset event).
    PowerOff,
    /// The VMM was asked to stop by a signal.
    Signal(&'static str),
    /// The guest kernel panicked; the line it printed.
    GuestPanic(String),
    /// A vCPU triple-faulted.
    TripleFault {
        /// Which vCPU.
        vcpu: u8,
    },
    /// KVM could not run the guest any more (internal error, failed entry, crash event).
    Kvm {
        /// Which vCPU.
        vcpu: u8,
        /// What KVM said.
        detail: String,
    },
    /// The VMM itself failed while the guest ran.
    Vmm(String),
}

impl ExitReason {
    /// The process exit code for this reason: 0 for an orderly end, non-zero for a failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff | ExitReason::Signal(_) => 0,
            ExitReason::GuestPanic(_) => 2,
            ExitReason::TripleFault { .. } => 3,
            ExitReason::Kvm { .. } => 4,
            ExitReason::Vmm(_) => 5,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Signal(name) => write!(f, "stopped by {name}"),
            ExitReason::GuestPanic(line) => write!(f, "guest kernel panic: {line}"),
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple fault (shutdown)"),
            ExitReason::Kvm { vcpu, detail } => write!(f, "vCPU {vcpu}: {detail}"),
            ExitReason::Vmm(detail) => write!(f, "VMM error: {detail}"),
        }
    }
}

/// What a VMM leaves behind with `--exit-file`: how it ended, for whoever supervises it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    /// Process exit code.
    pub code: i32,
    /// One-line reason.
    pub reason: String,
}

/// Bytes of an exit file reserved before the VMM starts ([`ExitRecord::reserve`]).
pub const EXIT_FILE_LEN: usize = 4096;

impl ExitRecord {
    /// Reserve `path` for a record written later ([`EXIT_FILE_LEN`] spaces, synced), so
    /// that the VMM can say why it ended even when the disk has filled up meanwhile. The node
    /// daemon does this before it starts a VMM.
    ///
    /// The file is made anew (any old one, or a symbolic link in its place, is removed
    /// first), so a directory another user can write is safe to reserve in.
    pub fn reserve(path: &std::path::Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        std::io::Write::write_all(&mut f, &[b' '; EXIT_FILE_LEN])?;
        f.sync_all()
    }

    /// Whether `path` holds the room [`ExitRecord::reserve`] makes (a supervisor reserved it).
    pub fn is_reserved(path: &std::path::Path) -> bool {
        std::fs::metadata(path).is_ok_and(|m| m.len() >= EXIT_FILE_LEN as u64)
    }

    /// The record as JSON of at most [`EXIT_FILE_LEN`] bytes (a very long reason is cut).
    fn json(&self) -> std::io::Result<Vec<u8>> {
        let mut record = self.clone();
        loop {
            let json = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            if json.len() <= EXIT_FILE_LEN {
                return Ok(json);
            }
            let keep = record
                .reason
                .len()
                .saturating_sub(json.len() - EXIT_FILE_LEN + 8);
            let cut = (0..=keep)
                .rev()
                .find(|&i| record.reason.is_char_boundary(i))
                .unwrap_or(0);
            record.reason.truncate(cut);
            record.reason.push_str(" [cut]");
        }
    }

    /// Write to `path`: into the space [`ExitRecord::reserve`] made (overwritten in place,
    /// padded with spaces, synced: needs no new disk space), or else atomically (temporary
    /// file, fsync, rename).
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let json = self.json()?;
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(path) {
            if f.metadata()?.len() >= EXIT_FILE_LEN as u64 {
                let mut buf = json;
                buf.resize(EXIT_FILE_LEN, b' ');
                f.write_all_at(&buf, 0)?;
                return f.sync_data();
            }
        }
        let tmp = path.with_extension("tmp");
        let written = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &json)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Read one written by [`ExitRecord::write`]; a reserved file the VMM never wrote is an
    /// error ([`std::io::ErrorKind::NotFound`]).
    pub fn read(path: &std::path::Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the VMM wrote no exit record",
            ));
        }
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// Collects the exit reason and wakes the VMM's event loop.
#[derive(Debug)]
pub struct ExitSignal {
    reason: Mutex<Option<ExitReason>>,
    stopping: AtomicBool,
    evt: EventFd,
}

impl ExitSignal {
    /// A signal with its own eventfd.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            stopping: AtomicBool::new(false),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Record `reason` unless one is recorded already, and ask everything to stop.
    pub fn report(&self, reason: ExitReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            log::debug!("exit requested: {reason}");
            *slot = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            log::error!("waking the event loop: {e}");
        }
    }

    /// Whether a stop was requested.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd written on every report.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_record_roundtrips() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("exit.json");
        let r = ExitRecord {
            code: 2,
            reason: "guest kernel panic: x".into(),
        };
        r.write(&path).expect("write");
        assert_eq!(ExitRecord::read(&path).expect("read"), r);
    }

    #[test]
    fn a_reserved_exit_file_is_written_in_place_and_cut_to_fit() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("x.exit.json");
        ExitRecord::reserve(&path).expect("reserve");
        assert_eq!(
            ExitRecord::read(&path).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::NotFound),
            "reserved, not written"
        );
        let long = ExitRecord {
            code: 2,
            reason: format!("guest kernel panic: {}", "é".repeat(5000)),
        };
        long.write(&path).expect("write");
        assert_eq!(
            std::fs::metadata(&path).expect("meta").len(),
            EXIT_FILE_LEN as u64,
            "in place"
        );
        let read = ExitRecord::read(&path).expect("read");
        assert_eq!(read.code, 2);
        assert!(
            read.reason.starts_with("guest kernel panic: é") && read.reason.ends_with(" [cut]")
        );
        let short = ExitRecord {
            code: 0,
            reason: "guest powered off".into(),
        };
        short.write(&path).expect("rewrite");
        assert_eq!(ExitRecord::read(&path).expect("read"), short);
    }

    #[test]
    fn first_reason_wins() {
        let s = ExitSignal::new().expect("signal");
        assert!(!s.is_stopping());
        s.report(ExitReason::GuestPanic(
            "Kernel panic - not syncing: x".into(),
        ));
        s.report(ExitReason::PowerOff);
        assert!(s.is_stopping());
        assert_eq!(s.reason().map(|r| r.exit_code()), Some(2));
        assert_eq!(s.eventfd().read().expect("evt"), 2);
    }

    #[test]
    fn exit_codes_are_distinct_for_failures() {
        assert_eq!(ExitReason::PowerOff.exit_code(), 0);
        assert_eq!(ExitReason::Signal("SIGINT").exit_code(), 0);
        let codes = [
            ExitReason::GuestPanic(String::new()).exit_code(),
            ExitReason::TripleFault { vcpu: 0 }.exit_code(),
            ExitReason::Kvm {
                vcpu: 0,
                detail: String::new(),
            }
            .exit_code(),
            ExitReason::Vmm(String::new()).exit_code(),
            EXIT_SETUP_ERROR,
        ];
        for (i, a) in codes.iter().enumerate() {
            assert_ne!(*a, 0);
            for b in &codes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
