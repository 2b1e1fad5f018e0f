//! The shared-memory ledger between the node daemon and the VMMs.
//!
//! One file in the node's state directory (`shaper.ledger`), mapped shared by the daemon and
//! by every VMM. A header, then one fixed slot per sliver. Every field is an `AtomicU64`;
//! each field has exactly one writer, so no locks are needed:
//! - the VMM writes its line: bytes sent/received, backlog flags, time throttled, heartbeat;
//! - the daemon writes the limits (on create and PATCH) and the allocation (every tick).
//!
//! The file survives daemon restarts (byte counters and the daily baseline with it), and a
//! VMM that outlives the daemon keeps its mapping.
// Casts on the packet path and in shared memory must not truncate or wrap silently.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

const MAGIC: u64 = u64::from_le_bytes(*b"SVLEDGR1");
const VERSION: u64 = 1;
/// Slots in a ledger: slivers a node can shape at once.
pub const SLOTS: usize = 256;
const HEADER_LEN: usize = 4096;
/// Bytes of a sliver name a slot keeps.
pub const NAME_LEN: usize = 64;
/// "No limit" in every rate field.
pub const UNLIMITED: u64 = u64::MAX;

/// What went wrong with a ledger file.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Opening, sizing or mapping the file failed.
    #[error("shaper ledger {path}: {source}")]
    Io {
        /// The ledger file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a ledger of this version.
    #[error("shaper ledger {path}: not a version-{VERSION} ledger ({why})")]
    Format {
        /// The ledger file.
        path: PathBuf,
        /// What did not match.
        why: String,
    },
    /// A slot index out of range.
    #[error("shaper ledger slot {0} is out of range (0..{SLOTS})")]
    Slot(usize),
}

/// The ledger header.
#[repr(C)]
pub struct Header {
    magic: AtomicU64,
    version: AtomicU64,
    slots: AtomicU64,
    /// Node TX capacity in bytes/s (`UNLIMITED`: none).
    pub node_tx: AtomicU64,
    /// Node RX capacity in bytes/s.
    pub node_rx: AtomicU64,
    /// Allocation rounds done.
    pub ticks: AtomicU64,
}

/// One sliver's slot. Field groups are cache-line aligned by writer.
#[repr(C, align(64))]
pub struct Slot {
    // --- written by the VMM ---
    /// Bytes the guest sent (monotonic over the slot's life).
    pub tx_bytes: AtomicU64,
    /// Bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// 1 while TX frames wait for tokens.
    pub tx_backlog: AtomicU64,
    /// 1 while RX frames wait for tokens.
    pub rx_backlog: AtomicU64,
    /// Nanoseconds TX waited for tokens.
    pub tx_throttled_ns: AtomicU64,
    /// Nanoseconds RX waited for tokens.
    pub rx_throttled_ns: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds of the VMM's last visit.
    pub heartbeat_ns: AtomicU64,
    _pad0: AtomicU64,
    // --- written by the daemon: the allocation ---
    /// Allocated TX rate, bytes/s.
    pub tx_alloc: AtomicU64,
    /// Allocated RX rate, bytes/s.
    pub rx_alloc: AtomicU64,
    /// 1 when the slot belongs to a sliver.
    pub in_use: AtomicU64,
    /// UTC day number that `day_start_tx` belongs to.
    pub day: AtomicU64,
    /// `tx_bytes` at the start of that day.
    pub day_start_tx: AtomicU64,
    _pad1: [AtomicU64; 3],
    // --- written by the daemon: the limits ---
    /// `net_share`.
    pub weight: AtomicU64,
    /// `net_min_rate`, bit/s.
    pub min_bps: AtomicU64,
    /// `net_max_rate`, bit/s (`UNLIMITED`: none).
    pub max_bps: AtomicU64,
    /// `net_thresh_kbyte` (`UNLIMITED`: no budget).
    pub thresh_kbyte: AtomicU64,
    /// `net_max_kbyte` (`UNLIMITED`: no budget).
    pub max_kbyte: AtomicU64,
    _pad2: [AtomicU64; 3],
    name: [AtomicU64; NAME_LEN / 8],
}

const SLOT_LEN: usize = std::mem::size_of::<Slot>();
const FILE_LEN: usize = HEADER_LEN + SLOTS * SLOT_LEN;

/// CLOCK_MONOTONIC in nanoseconds (the same clock in every process of the host).
pub fn monotonic_ns() -> u64 {
    crate::clock::clock_ns(libc::CLOCK_MONOTONIC)
}

impl Slot {
    /// The sliver name kept in the slot ("" when free).
    pub fn name(&self) -> String {
        let bytes = self.name_bytes();
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        String::from_utf8_lossy(&bytes[..end]).into_owned()
    }

    /// Whether the slot is kept for sliver `name` (compared in place, nothing allocated).
    pub fn name_is(&self, name: &str) -> bool {
        let bytes = self.name_bytes();
        let n = name.len();
        n <= NAME_LEN && bytes[..n] == *name.as_bytes() && bytes.get(n).is_none_or(|&b| b == 0)
    }

    fn name_bytes(&self) -> [u8; NAME_LEN] {
        let mut bytes = [0u8; NAME_LEN];
        for (chunk, w) in bytes.chunks_exact_mut(8).zip(&self.name) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        bytes
    }

    fn set_name(&self, name: &str) {
        let mut bytes = [0u8; NAME_LEN];
        let n = name.len().min(NAME_LEN);
        bytes[..n].copy_from_slice(&name.as_bytes()[..n]);
        for (w, chunk) in self.name.iter().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    /// Clear everything and give the slot to `name` (daemon only).
    pub fn claim(&self, name: &str, today: u64) {
        for f in [
            &self.tx_bytes,
            &self.rx_bytes,
            &self.tx_backlog,
            &self.rx_backlog,
            &self.tx_throttled_ns,
            &self.rx_throttled_ns,
            &self.heartbeat_ns,
            &self.day_start_tx,
        ] {
            f.store(0, Ordering::Relaxed);
        }
        self.tx_alloc.store(UNLIMITED, Ordering::Relaxed);
        self.rx_alloc.store(UNLIMITED, Ordering::Relaxed);
        self.day.store(today, Ordering::Relaxed);
        self.set_name(name);
        self.in_use.store(1, Ordering::Release);
    }

    /// Give the slot back (daemon only).
    pub fn release(&self) {
        self.in_use.store(0, Ordering::Release);
        self.set_name("");
    }

    /// Whether the slot belongs to a sliver.
    pub fn is_used(&self) -> bool {
        self.in_use.load(Ordering::Acquire) == 1
    }
}

/// A mapped ledger file.
pub struct Ledger {
    map: MmapMut,
    path: PathBuf,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("path", &self.path).finish()
    }
}

impl Ledger {
    fn map(path: &Path, file: &File) -> Result<MmapMut, LedgerError> {
        // SAFETY: the file is ours (state dir), sized to FILE_LEN; other processes only touch
        // it through atomics, which is what makes the shared mapping sound to read and write.
        unsafe { MmapMut::map_mut(file) }.map_err(|source| LedgerError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// The daemon's open: use the file at `path` if it is a valid ledger, else (re)create it.
    pub fn create_or_open(path: &Path) -> Result<Self, LedgerError> {
        match Self::open(path) {
            Ok(l) => return Ok(l),
            Err(LedgerError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{e}; starting a new ledger"),
        }
        let io = |source| LedgerError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("new");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io)?;
        file.set_len(FILE_LEN as u64).map_err(io)?;
        let ledger = Self {
            map: Self::map(&tmp, &file)?,
            path: path.to_owned(),
        };
        let h = ledger.header();
        h.version.store(VERSION, Ordering::Relaxed);
        h.slots.store(SLOTS as u64, Ordering::Relaxed);
        h.node_tx.store(UNLIMITED, Ordering::Relaxed);
        h.node_rx.store(UNLIMITED, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(ledger)
    }

    /// Open an existing ledger (the VMM's open).
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        Self::open_file(path, file)
    }

    /// Map an existing ledger through `file`, opened read-write by someone with the right to
    /// (a jailed VMM gets it from before the jail); `path` names it in errors.
    pub fn open_file(path: &Path, file: File) -> Result<Self, LedgerError> {
        let io = |source| LedgerError::Io {
            path: path.to_owned(),
            source,
        };
        let len = file.metadata().map_err(io)?.len();
        let format = |why: String| LedgerError::Format {
            path: path.to_owned(),
            why,
        };
        if len != FILE_LEN as u64 {
            return Err(format(format!("{len} bytes, expected {FILE_LEN}")));
        }
        let ledger = Self {
            map: Self::map(path, &file)?,
            path: path.to_owned(),
        };
        let h = ledger.header();
        if h.magic.load(Ordering::Acquire) != MAGIC {
            return Err(format("bad magic".into()));
        }
        let (v, s) = (
            h.version.load(Ordering::Relaxed),
            h.slots.load(Ordering::Relaxed),
        );
        if v != VERSION || s != SLOTS as u64 {
            return Err(format(format!("version {v}, {s} slots")));
        }
        Ok(ledger)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header.
    pub fn header(&self) -> &Header {
        // SAFETY: the map is FILE_LEN bytes, page-aligned, and Header (all AtomicU64) fits in
        // the first HEADER_LEN bytes; any bit pattern is a valid AtomicU64.
        unsafe { &*(self.map.as_ptr() as *const Header) }
    }

    /// Slot `index`.
    pub fn slot(&self, index: usize) -> Result<&Slot, LedgerError> {
        if index >= SLOTS {
            return Err(LedgerError::Slot(index));
        }
        // SAFETY: HEADER_LEN + index * SLOT_LEN + SLOT_LEN <= FILE_LEN (index < SLOTS); the
        // offset is a multiple of 64, Slot's alignment, because the map is page-aligned and
        // HEADER_LEN and SLOT_LEN are multiples of 64; any bit pattern is a valid Slot.
        Ok(unsafe { &*(self.map.as_ptr().add(HEADER_LEN + index * SLOT_LEN) as *const Slot) })
    }

    /// Every slot with its index.
    pub fn slots(&self) -> impl Iterator<Item = (usize, &Slot)> {
        (0..SLOTS).filter_map(|i| self.slot(i).ok().map(|s| (i, s)))
    }
}

const _: () = assert!(std::mem::size_of::<Header>() <= HEADER_LEN);
const _: () = assert!(SLOT_LEN.is_multiple_of(64) && HEADER_LEN.is_multiple_of(64));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_see_each_others_writes() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("shaper.ledger");
        let daemon = Ledger::create_or_open(&path).expect("create");
        let vmm = Ledger::open(&path).expect("open");
        daemon.slot(3).expect("slot").claim("alice", 7);
        daemon
            .slot(3)
            .expect("slot")
            .tx_alloc
            .store(1234, Ordering::Relaxed);
        let s = vmm.slot(3).expect("slot");
        assert!(s.is_used());
        assert_eq!(s.name(), "alice");
        assert!(s.name_is("alice") && !s.name_is("alic") && !s.name_is("alice2"));
        assert_eq!(s.tx_alloc.load(Ordering::Relaxed), 1234);
        s.tx_bytes.fetch_add(99, Ordering::Relaxed);
        assert_eq!(
            daemon
                .slot(3)
                .expect("slot")
                .tx_bytes
                .load(Ordering::Relaxed),
            99
        );
    }

    #[test]
    fn reopen_keeps_counters_and_bad_files_are_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("shaper.ledger");
        {
            let l = Ledger::create_or_open(&path).expect("create");
            let s = l.slot(0).expect("slot");
            s.claim("bob", 1);
            s.tx_bytes.store(5000, Ordering::Relaxed);
        }
        let l = Ledger::create_or_open(&path).expect("reopen");
        assert_eq!(l.slot(0).expect("slot").name(), "bob");
        assert_eq!(
            l.slot(0).expect("slot").tx_bytes.load(Ordering::Relaxed),
            5000
        );
        drop(l);
        std::fs::write(&path, b"garbage").expect("corrupt");
        let err = Ledger::open(&path).expect_err("corrupt ledger refused");
        assert!(err.to_string().contains("expected"), "{err}");
        let l = Ledger::create_or_open(&path).expect("recreated");
        assert!(!l.slot(0).expect("slot").is_used());
    }

    #[test]
    fn out_of_range_slot_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let l = Ledger::create_or_open(&dir.path().join("l")).expect("create");
        assert!(matches!(l.slot(SLOTS), Err(LedgerError::Slot(_))));
        assert!(Ledger::open(&dir.path().join("missing")).is_err());
    }
}
