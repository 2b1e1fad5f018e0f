//! The header capture ring of one sliver: a memory-mapped file of fixed-size slots, each one
//! packet's first `snaplen` bytes with its time, NIC, direction, verdict and original length.
//! [`CaptureRing::push`] neither blocks nor allocates; the oldest packets are overwritten.
//! Stores go to the page cache at once, so the ring survives the VMM being killed; a slot cut
//! short by a kill fails its commit words ([`slot`]) and is skipped by [`read_ring`].
//!
//! File: a 4096-byte header ([`RingGeometry`]), then the slots; packet `seq` (from 1) goes to
//! slot `(seq - 1) % slots`.

mod ahead;
mod geometry;
mod slot;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use packet::{Direction, Verdict};

use self::ahead::Ahead;
pub use self::ahead::{Populate, CHUNK, LEAD};
pub use self::geometry::RingGeometry;
use self::geometry::{HEADER, VERSION};
pub use self::slot::CapturedPacket;
use self::slot::SlotHeader;
use super::error::{AuditError, Result};
use super::lock::lock_exclusive;
use super::mmap::SharedMap;

/// The ring's file name in a sliver's audit directory.
pub const RING_FILE: &str = "capture.ring";

/// Capture settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Capture at all (on by default).
    pub enabled: bool,
    /// Bytes kept of each packet.
    pub snaplen: u16,
    /// Size of the ring file.
    pub bytes: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            enabled: true,
            snaplen: 128,
            bytes: 64 << 20,
        }
    }
}

impl CaptureConfig {
    /// The ring these settings make: slot size and count (`None` when the file would hold
    /// no slot, or `snaplen` is 0).
    pub fn geometry(&self) -> Option<RingGeometry> {
        RingGeometry::of(self.snaplen, self.bytes)
    }
}

/// The writer of one sliver's capture ring.
#[derive(Debug)]
pub struct CaptureRing {
    map: SharedMap,
    geometry: RingGeometry,
    next_seq: u64,
    /// Byte offset of `next_seq`'s slot (kept, not computed: a 64-bit division per packet).
    next_at: usize,
    /// The first lap's pages to fault in ahead of the writer.
    ahead: Ahead,
    path: PathBuf,
    _file: File,
}

impl CaptureRing {
    /// Open (or create) the ring at `path`, locked against a second writer; numbering
    /// continues after the highest seq in it. A ring of another geometry or an older layout
    /// is re-made with its newest packets carried over (cut to the new snap length): the new
    /// ring is written beside it (`<path>.new`), synced, and renamed over it, so that a kill
    /// or crash meanwhile leaves the old ring whole.
    ///
    /// Errors: `Locked` when another process writes the ring, `Invalid` when `config` makes
    /// no slot or too many, `Io` naming the file (including a disk too full to reserve the
    /// file's blocks).
    pub fn open(path: &Path, config: &CaptureConfig) -> Result<CaptureRing> {
        let geometry = config.geometry().ok_or_else(|| {
            AuditError::invalid(
                "capture size",
                "too small for one packet of the snap length, or over 2^32 slots",
            )
        })?;
        let file = open_locked(path, false)?;
        // Left by a writer killed while re-making the ring (the old ring is whole).
        let _ = fs::remove_file(beside(path));
        let existing = fs::read(path).map_err(|e| AuditError::io(path, e))?;
        let found = RingGeometry::parse(&existing);
        if let Some((VERSION, g)) = found {
            // Numbering goes on after the highest seq of any slot, whole or torn: a reused
            // seq could let a slot hold halves of two packets under matching commit words.
            let next = next_seq_after(highest_seq(&existing, g));
            if let (true, Some(next)) = (g == geometry, next) {
                return CaptureRing::mapped(file, path, geometry, next);
            }
        }
        let carried = match found {
            Some((version, g)) => newest_packets(&existing, version, g, geometry.slots),
            None => Vec::new(),
        };
        drop(existing);
        if let Some(next) = carried.last().and_then(|p| next_seq_after(p.seq)) {
            match CaptureRing::remade(path, geometry, &carried, next) {
                Ok(ring) => return Ok(ring),
                // The new ring needs room beside the old one: without it the packets go, not
                // the sliver's start.
                Err(e) => log::warn!(
                    "{}: re-making the capture ring beside the old one: {e}; re-made in \
                     place, its {} packets not kept",
                    path.display(),
                    carried.len()
                ),
            }
        }
        // Nothing worth keeping (or no room to keep it): re-made in place.
        file.set_len(0).map_err(|e| AuditError::io(path, e))?;
        CaptureRing::mapped(file, path, geometry, 1)
    }

    /// The ring of `geometry` in `file` (locked; its name `path`), sized, its blocks
    /// reserved, its header written, mapped; the next packet is `next_seq`.
    fn mapped(
        file: File,
        path: &Path,
        geometry: RingGeometry,
        next_seq: u64,
    ) -> Result<CaptureRing> {
        let io = |e| AuditError::io(path, e);
        file.set_len(geometry.file_len() as u64).map_err(io)?;
        allocate(&file, geometry.file_len()).map_err(io)?;
        // The header with pwrite, not through the mapping: the mapping's first fault reads
        // ahead (~2 ms on the test hosts, docs/benchmarks.md), better taken by the first
        // packet than by every start.
        file.write_all_at(&geometry.header(), 0).map_err(io)?;
        let map = SharedMap::new(&file, geometry.file_len()).map_err(io)?;
        let next_at = geometry.slot_at(next_seq);
        Ok(CaptureRing {
            map,
            geometry,
            next_seq,
            next_at,
            ahead: Ahead::new(next_at, geometry.file_len(), geometry.slot_size),
            path: path.to_path_buf(),
            _file: file,
        })
    }

    /// A new ring of `geometry` holding `carried` (oldest first), made beside `path` and
    /// renamed over it once on disk.
    fn remade(
        path: &Path,
        geometry: RingGeometry,
        carried: &[CapturedPacket],
        next_seq: u64,
    ) -> Result<CaptureRing> {
        let new = beside(path);
        let made = open_locked(&new, true)
            .and_then(|file| CaptureRing::mapped(file, &new, geometry, next_seq))
            .and_then(|mut ring| {
                for p in carried {
                    ring.write(&SlotHeader::from(p), &p.data);
                }
                ring._file
                    .sync_data()
                    .map_err(|e| AuditError::io(&new, e))?;
                fs::rename(&new, path).map_err(|e| AuditError::io(path, e))?;
                ring.path = path.to_path_buf();
                Ok(ring)
            });
        if made.is_err() {
            let _ = fs::remove_file(&new);
        }
        made
    }

    /// Record one packet: `bytes` is the frame (only the first snaplen bytes are kept),
    /// `orig_len` its length on the wire. During the first lap after open, returns now and
    /// then a range of the ring to fault in ahead of the writer, on another thread
    /// ([`Populate::run`]); ignoring it costs only the page faults it would have saved.
    pub fn push(
        &mut self,
        ts_ns: u64,
        nic: u8,
        direction: Direction,
        verdict: Verdict,
        orig_len: u32,
        bytes: &[u8],
    ) -> Option<Populate> {
        let header = SlotHeader {
            seq: self.next_seq,
            ts_ns,
            nic,
            direction,
            verdict,
            orig_len,
        };
        let at = self.next_at;
        self.next_seq += 1;
        self.next_at += self.geometry.slot_size;
        if self.next_at == self.geometry.file_len() {
            self.next_at = HEADER;
        }
        self.write_at(at, &header, bytes);
        self.ahead.step(self.map.addr())
    }

    /// Write packet `header.seq` into its slot, `bytes` cut to the snap length.
    fn write(&mut self, header: &SlotHeader, bytes: &[u8]) {
        self.write_at(self.geometry.slot_at(header.seq), header, bytes);
    }

    /// Write packet `header` into the slot at byte `at`.
    fn write_at(&mut self, at: usize, header: &SlotHeader, bytes: &[u8]) {
        let g = self.geometry;
        let slot = &mut self.map.as_mut_slice()[at..at + g.slot_size];
        slot::write(
            slot,
            header,
            &bytes[..bytes.len().min(usize::from(g.snaplen))],
        );
    }

    /// Ask the kernel to start writing the ring back (for a periodic timer; never blocks).
    pub fn flush_async(&self) -> Result<()> {
        self.map
            .flush_async()
            .map_err(|e| AuditError::io(&self.path, e))
    }

    /// The geometry in use.
    pub fn geometry(&self) -> RingGeometry {
        self.geometry
    }
}

/// Where a ring at `path` is re-made: `<path>.new`.
fn beside(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".new");
    PathBuf::from(name)
}

/// The file at `path`, created if missing (emptied if `truncate`), locked against a second
/// writer.
///
/// The lock is taken on the file `path` names once locked: a writer re-making the ring
/// renames a new file over it, and a lock on the file it replaced guards nothing.
fn open_locked(path: &Path, truncate: bool) -> Result<File> {
    let io = |e| AuditError::io(path, e);
    loop {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(truncate)
            .open(path)
            .map_err(io)?;
        lock_exclusive(&file, path, path)?;
        let (held, named) = (
            file.metadata().map_err(io)?,
            fs::metadata(path).map_err(io)?,
        );
        if (held.dev(), held.ino()) == (named.dev(), named.ino()) {
            return Ok(file);
        }
    }
}

/// The seq after `seq`, unless it is past half the range: no ring lives that long, so such a
/// seq is damage, and counting on from it could wrap.
fn next_seq_after(seq: u64) -> Option<u64> {
    seq.checked_add(1).filter(|&next| next < 1 << 63)
}

/// Reserve every block of the file, so that stores into the mapping can never hit a full
/// disk (which would kill the VMM with SIGBUS instead of failing here).
fn allocate(file: &File, len: usize) -> std::io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: posix_fallocate on a descriptor owned by `file`; no memory is passed.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// A written slot of a ring file.
enum Written {
    Packet(CapturedPacket),
    /// Written, but holding no valid packet.
    Torn,
    /// Not the same in a second read of the file.
    Rewritten,
}

/// The written slots of the ring file `buf` (of `version` and geometry `g`), in slot order;
/// with `again` (a second read of the file), a slot not the same in both is `Rewritten`.
fn written_slots<'a>(
    buf: &'a [u8],
    again: Option<&'a [u8]>,
    version: u32,
    g: RingGeometry,
) -> impl Iterator<Item = Written> + 'a {
    let read = if version == VERSION {
        slot::read
    } else {
        slot::read_v1
    };
    buf[HEADER..]
        .chunks_exact(g.slot_size)
        .enumerate()
        .filter_map(move |(i, s)| {
            let at = HEADER + i * g.slot_size;
            if again.is_some_and(|a| a.get(at..at + g.slot_size) != Some(s)) {
                return Some(Written::Rewritten);
            }
            match read(s) {
                Some(p) => Some(Written::Packet(p)),
                None if s.iter().any(|b| *b != 0) => Some(Written::Torn),
                None => None,
            }
        })
}

fn valid_packets(
    buf: &[u8],
    version: u32,
    g: RingGeometry,
) -> impl Iterator<Item = CapturedPacket> + '_ {
    written_slots(buf, None, version, g).filter_map(|w| match w {
        Written::Packet(p) => Some(p),
        Written::Torn | Written::Rewritten => None,
    })
}

/// The highest seq in either commit word of any slot of a version 2 ring file, 0 if none.
fn highest_seq(buf: &[u8], g: RingGeometry) -> u64 {
    buf[HEADER..]
        .chunks_exact(g.slot_size)
        .map(|s| slot::commit_words(s).map_or(0, |(a, b)| a.max(b)))
        .max()
        .unwrap_or(0)
}

/// The packets of a ring file within `keep` of its newest (so each has a slot of its own in
/// a ring of `keep` slots), oldest first.
fn newest_packets(buf: &[u8], version: u32, g: RingGeometry, keep: usize) -> Vec<CapturedPacket> {
    let mut found: Vec<CapturedPacket> = valid_packets(buf, version, g).collect();
    found.sort_by_key(|p| p.seq);
    let first = found
        .last()
        .map_or(0, |p| p.seq)
        .saturating_sub(keep as u64);
    found.retain(|p| p.seq > first);
    found
}

/// What [`read_ring`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingContents {
    /// Valid packets, oldest first.
    pub packets: Vec<CapturedPacket>,
    /// Written slots holding no valid packet (cut short by a kill, or a write in progress
    /// through both reads), skipped.
    pub torn: u64,
    /// Slots that changed between the two reads of the file (a live ring being written),
    /// skipped.
    pub rewritten: u64,
    /// The ring's geometry.
    pub geometry: RingGeometry,
}

/// Read the ring at `path`, of either layout (no lock needed: a live ring may be read).
///
/// The file is read twice and a slot counts only if it is the same both times: within one
/// read the loads are not ordered (a `rep movs` copy), so a slot's commit words alone cannot
/// vouch for bytes read while the writer rewrote them. A ring re-made between the two reads
/// (by a VMM starting, when no writer is left on the old one) is taken from the first read.
///
/// Errors: `Io` naming `path`, `Format` when the file is not a ring of a known version.
pub fn read_ring(path: &Path) -> Result<RingContents> {
    let io = |e| AuditError::io(path, e);
    let first = fs::read(path).map_err(io)?;
    let (version, geometry) = RingGeometry::parse(&first).ok_or_else(|| AuditError::Format {
        path: path.to_path_buf(),
        reason: "not a capture ring (bad header, version or size)".into(),
    })?;
    let second = fs::read(path).map_err(io)?;
    let again = (RingGeometry::parse(&second) == Some((version, geometry))).then_some(&second[..]);
    let mut packets = Vec::new();
    let (mut torn, mut rewritten) = (0, 0);
    for w in written_slots(&first, again, version, geometry) {
        match w {
            Written::Packet(p) => packets.push(p),
            Written::Torn => torn += 1,
            Written::Rewritten => rewritten += 1,
        }
    }
    packets.sort_by_key(|p| p.seq);
    Ok(RingContents {
        packets,
        torn,
        rewritten,
        geometry,
    })
}

#[cfg(test)]
mod tests;
