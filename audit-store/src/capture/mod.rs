//! The header capture ring of one sliver: a memory-mapped file of fixed-size slots, each one
//! packet's first `snaplen` bytes with its time, NIC, direction, verdict and original length.
//! [`CaptureRing::push`] neither blocks nor allocates; the oldest packets are overwritten.
//! Stores go to the page cache at once, so the ring survives the VMM being killed; a slot cut
//! short by a kill fails its commit words ([`slot`]) and is skipped by [`read_ring`].
//!
//! File: a 4096-byte header ([`RingGeometry`]), then the slots; packet `seq` (from 1) goes to
//! slot `(seq - 1) % slots`.

mod geometry;
mod slot;

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use packet::{Direction, Verdict};

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
    path: PathBuf,
    _file: File,
}

impl CaptureRing {
    /// Open (or create) the ring at `path`, locked against a second writer; numbering
    /// continues after the newest packet in it. A ring of another geometry or an older
    /// layout is re-made with its newest packets carried over (cut to the new snap length).
    ///
    /// Errors: `Locked` when another process writes the ring, `Invalid` when `config` makes
    /// no slot, `Io` naming `path` (including a disk too full to reserve the file's blocks).
    pub fn open(path: &Path, config: &CaptureConfig) -> Result<CaptureRing> {
        let geometry = config.geometry().ok_or_else(|| {
            AuditError::invalid(
                "capture size",
                "too small for one packet of the snap length",
            )
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| AuditError::io(path, e))?;
        lock_exclusive(&file, path, path)?;
        let io = |e| AuditError::io(path, e);
        let existing = fs::read(path).map_err(io)?;
        let (next_seq, carried) = match RingGeometry::parse(&existing) {
            Some((VERSION, g)) if g == geometry => (newest_seq(&existing, &g) + 1, Vec::new()),
            found => {
                let carried = match found {
                    Some((version, g)) => newest_packets(&existing, version, &g, geometry.slots),
                    None => Vec::new(),
                };
                file.set_len(0).map_err(io)?;
                file.set_len(geometry.file_len() as u64).map_err(io)?;
                (carried.last().map_or(0, |p| p.seq) + 1, carried)
            }
        };
        allocate(&file, geometry.file_len()).map_err(io)?;
        drop(existing);
        // The header with pwrite, not through the mapping: the mapping's first fault reads
        // ahead (~2 ms on the test hosts, docs/benchmarks.md), better taken by the first
        // packet than by every start.
        file.write_all_at(&geometry.header(), 0).map_err(io)?;
        let map = SharedMap::new(&file, geometry.file_len()).map_err(io)?;
        let mut ring = CaptureRing {
            map,
            geometry,
            next_seq,
            path: path.to_path_buf(),
            _file: file,
        };
        for p in &carried {
            ring.write(&SlotHeader::from(p), &p.data);
        }
        Ok(ring)
    }

    /// Record one packet: `bytes` is the frame (only the first snaplen bytes are kept),
    /// `orig_len` its length on the wire.
    pub fn push(
        &mut self,
        ts_ns: u64,
        nic: u8,
        direction: Direction,
        verdict: Verdict,
        orig_len: u32,
        bytes: &[u8],
    ) {
        let header = SlotHeader {
            seq: self.next_seq,
            ts_ns,
            nic,
            direction,
            verdict,
            orig_len,
        };
        self.next_seq += 1;
        self.write(&header, bytes);
    }

    /// Write packet `header.seq` into its slot, `bytes` cut to the snap length.
    fn write(&mut self, header: &SlotHeader, bytes: &[u8]) {
        let g = self.geometry;
        let at = g.slot_at(header.seq);
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
}

/// The written slots of the ring file `buf` (of `version` and geometry `g`), in slot order.
fn written_slots(buf: &[u8], version: u32, g: RingGeometry) -> impl Iterator<Item = Written> + '_ {
    let read = if version == VERSION {
        slot::read
    } else {
        slot::read_v1
    };
    buf[HEADER..]
        .chunks_exact(g.slot_size)
        .filter_map(move |s| match read(s) {
            Some(p) => Some(Written::Packet(p)),
            None if s.iter().any(|b| *b != 0) => Some(Written::Torn),
            None => None,
        })
}

fn valid_packets(
    buf: &[u8],
    version: u32,
    g: RingGeometry,
) -> impl Iterator<Item = CapturedPacket> + '_ {
    written_slots(buf, version, g).filter_map(|w| match w {
        Written::Packet(p) => Some(p),
        Written::Torn => None,
    })
}

fn newest_seq(buf: &[u8], g: &RingGeometry) -> u64 {
    valid_packets(buf, VERSION, *g)
        .map(|p| p.seq)
        .max()
        .unwrap_or(0)
}

/// The packets of a ring file within `keep` of its newest (so each has a slot of its own in
/// a ring of `keep` slots), oldest first.
fn newest_packets(buf: &[u8], version: u32, g: &RingGeometry, keep: usize) -> Vec<CapturedPacket> {
    let mut found: Vec<CapturedPacket> = valid_packets(buf, version, *g).collect();
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
    /// Written slots holding no valid packet (cut short by a kill, or being written while
    /// read), skipped.
    pub torn: u64,
    /// The ring's geometry.
    pub geometry: RingGeometry,
}

/// Read the ring at `path`, of either layout (no lock needed; a slot being written is
/// skipped as torn).
///
/// Errors: `Io` naming `path`, `Format` when the file is not a ring of a known version.
pub fn read_ring(path: &Path) -> Result<RingContents> {
    let buf = fs::read(path).map_err(|e| AuditError::io(path, e))?;
    let (version, geometry) = RingGeometry::parse(&buf).ok_or_else(|| AuditError::Format {
        path: path.to_path_buf(),
        reason: "not a capture ring (bad header, version or size)".into(),
    })?;
    let mut packets = Vec::new();
    let mut torn = 0;
    for w in written_slots(&buf, version, geometry) {
        match w {
            Written::Packet(p) => packets.push(p),
            Written::Torn => torn += 1,
        }
    }
    packets.sort_by_key(|p| p.seq);
    Ok(RingContents {
        packets,
        torn,
        geometry,
    })
}

#[cfg(test)]
mod tests;
