//! The header capture ring of one sliver: a memory-mapped file of fixed-size slots, each one
//! packet's first `snaplen` bytes with its time, NIC, direction, verdict and original length.
//! [`CaptureRing::push`] neither blocks nor allocates; the oldest packets are overwritten.
//! Stores go to the page cache at once, so the ring survives the VMM being killed; a slot torn
//! by a crash fails its CRC and is skipped by [`read_ring`].
//!
//! File: a 4096-byte header (`"SVCR" | version u32 | slot size u32 | slots u32 | snaplen u32`),
//! then the slots. Slot: `CRC32 u32 | caplen u16 | nic u8 | direction u8 | verdict u8 | 3
//! pad | orig_len u32 | seq u64 | ts_ns u64 | data` (CRC over everything after itself up to
//! the end of the data); seq 0 marks a slot never written.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use packet::{Direction, Verdict};

use super::error::{AuditError, Result};
use super::lock::lock_exclusive;
use super::mmap::SharedMap;

const MAGIC: [u8; 4] = *b"SVCR";
const VERSION: u32 = 1;
const HEADER: usize = 4096;
const SLOT_HEADER: usize = 32;
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
        RingGeometry::of(self)
    }
}

/// The geometry a ring file was made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingGeometry {
    /// Bytes per slot.
    pub slot_size: usize,
    /// Slots.
    pub slots: usize,
    /// Bytes kept of each packet.
    pub snaplen: u16,
}

impl RingGeometry {
    fn of(config: &CaptureConfig) -> Option<Self> {
        let slot_size = SLOT_HEADER + usize::from(config.snaplen).div_ceil(8) * 8;
        let slots = usize::try_from(config.bytes).ok()?.checked_sub(HEADER)? / slot_size;
        (slots > 0 && config.snaplen > 0).then_some(RingGeometry {
            slot_size,
            slots,
            snaplen: config.snaplen,
        })
    }

    fn file_len(&self) -> usize {
        HEADER + self.slots * self.slot_size
    }

    fn header(&self) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&VERSION.to_le_bytes());
        h[8..12].copy_from_slice(&(self.slot_size as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(self.slots as u32).to_le_bytes());
        h[16..20].copy_from_slice(&u32::from(self.snaplen).to_le_bytes());
        h
    }

    fn parse(buf: &[u8]) -> Option<Self> {
        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        if buf.len() < HEADER || buf[..4] != MAGIC || word(4) != VERSION {
            return None;
        }
        let g = RingGeometry {
            slot_size: word(8) as usize,
            slots: word(12) as usize,
            snaplen: u16::try_from(word(16)).ok()?,
        };
        let sane = g.slot_size >= SLOT_HEADER + usize::from(g.snaplen) && g.slots > 0;
        (sane && buf.len() == g.file_len()).then_some(g)
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
    /// Open (or create, or re-create if its geometry changed) the ring at `path`, locked
    /// against a second writer; numbering continues after the newest packet in it.
    pub fn open(path: &Path, config: &CaptureConfig) -> Result<CaptureRing> {
        let geometry = RingGeometry::of(config).ok_or_else(|| {
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
        let next_seq = match RingGeometry::parse(&existing) {
            Some(g) if g == geometry => newest_seq(&existing, &geometry) + 1,
            _ => {
                file.set_len(0).map_err(io)?;
                file.set_len(geometry.file_len() as u64).map_err(io)?;
                1
            }
        };
        allocate(&file, geometry.file_len()).map_err(io)?;
        drop(existing);
        // The header with pwrite, not through the mapping: the mapping's first fault reads
        // ahead (~2 ms on the test hosts, docs/benchmarks.md), better taken by the first
        // packet than by every start.
        file.write_all_at(&geometry.header(), 0).map_err(io)?;
        let map = SharedMap::new(&file, geometry.file_len()).map_err(io)?;
        Ok(CaptureRing {
            map,
            geometry,
            next_seq,
            path: path.to_path_buf(),
            _file: file,
        })
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
        let g = self.geometry;
        let seq = self.next_seq;
        self.next_seq += 1;
        let caplen = bytes.len().min(usize::from(g.snaplen));
        let at = HEADER + ((seq - 1) % g.slots as u64) as usize * g.slot_size;
        let slot = &mut self.map.as_mut_slice()[at..at + g.slot_size];
        slot[4..6].copy_from_slice(&(caplen as u16).to_le_bytes());
        slot[6] = nic;
        slot[7] = direction.code();
        slot[8] = verdict.code();
        slot[9..12].fill(0);
        slot[12..16].copy_from_slice(&orig_len.to_le_bytes());
        slot[16..24].copy_from_slice(&seq.to_le_bytes());
        slot[24..32].copy_from_slice(&ts_ns.to_le_bytes());
        slot[SLOT_HEADER..SLOT_HEADER + caplen].copy_from_slice(&bytes[..caplen]);
        let crc = crc32fast::hash(&slot[4..SLOT_HEADER + caplen]);
        slot[..4].copy_from_slice(&crc.to_le_bytes());
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

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedPacket {
    /// Order of capture.
    pub seq: u64,
    /// When, ns since the Unix epoch.
    pub ts_ns: u64,
    /// NIC index.
    pub nic: u8,
    /// Direction seen from the guest.
    pub direction: Direction,
    /// What the VMM did with it.
    pub verdict: Verdict,
    /// Length on the wire.
    pub orig_len: u32,
    /// The first snaplen bytes.
    pub data: Vec<u8>,
}

fn slot_packet(slot: &[u8]) -> Option<CapturedPacket> {
    let caplen = usize::from(u16::from_le_bytes([slot[4], slot[5]]));
    let data = slot.get(SLOT_HEADER..SLOT_HEADER + caplen)?;
    let crc = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
    let le64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&slot[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let seq = le64(16);
    if seq == 0 || crc32fast::hash(&slot[4..SLOT_HEADER + caplen]) != crc {
        return None;
    }
    Some(CapturedPacket {
        seq,
        ts_ns: le64(24),
        nic: slot[6],
        direction: Direction::from_code(slot[7])?,
        verdict: Verdict::from_code(slot[8])?,
        orig_len: u32::from_le_bytes([slot[12], slot[13], slot[14], slot[15]]),
        data: data.to_vec(),
    })
}

fn newest_seq(buf: &[u8], g: &RingGeometry) -> u64 {
    buf[HEADER..]
        .chunks_exact(g.slot_size)
        .filter_map(slot_packet)
        .map(|p| p.seq)
        .max()
        .unwrap_or(0)
}

/// What [`read_ring`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingContents {
    /// Valid packets, oldest first.
    pub packets: Vec<CapturedPacket>,
    /// Written slots that failed their CRC (torn by a crash) and were skipped.
    pub torn: u64,
    /// The ring's geometry.
    pub geometry: RingGeometry,
}

/// Read the ring at `path` (no lock needed; a slot being written may be skipped as torn).
pub fn read_ring(path: &Path) -> Result<RingContents> {
    let buf = fs::read(path).map_err(|e| AuditError::io(path, e))?;
    let geometry = RingGeometry::parse(&buf).ok_or_else(|| AuditError::Format {
        path: path.to_path_buf(),
        reason: "not a capture ring (bad header or size)".into(),
    })?;
    let mut packets = Vec::new();
    let mut torn = 0;
    for slot in buf[HEADER..].chunks_exact(geometry.slot_size) {
        match slot_packet(slot) {
            Some(p) => packets.push(p),
            None if slot.iter().any(|b| *b != 0) => torn += 1,
            None => {}
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
mod tests {
    use super::*;

    fn config(slots: u64) -> CaptureConfig {
        CaptureConfig {
            enabled: true,
            snaplen: 64,
            bytes: HEADER as u64 + slots * (SLOT_HEADER as u64 + 64),
        }
    }

    fn frame(i: u64, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i as usize + j) as u8).collect()
    }

    #[test]
    fn the_ring_keeps_the_newest_packets_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(RING_FILE);
        let mut ring = CaptureRing::open(&path, &config(10)).expect("open");
        assert_eq!(ring.geometry().slots, 10);
        for i in 0..25u64 {
            let verdict = Verdict::ALL[(i % 4) as usize];
            ring.push(
                1_000 + i,
                (i % 2) as u8,
                Direction::Rx,
                verdict,
                1500,
                &frame(i, 100),
            );
        }
        ring.flush_async().expect("msync");
        let got = read_ring(&path).expect("read");
        assert_eq!(got.torn, 0);
        let seqs: Vec<u64> = got.packets.iter().map(|p| p.seq).collect();
        assert_eq!(seqs, (16..=25).collect::<Vec<_>>());
        let last = got.packets.last().expect("a packet");
        assert_eq!(last.ts_ns, 1_024);
        assert_eq!(last.data, frame(24, 64), "cut to the snap length");
        assert_eq!(
            (last.orig_len, last.nic, last.verdict),
            (1500, 0, Verdict::Forwarded)
        );
        assert!(matches!(
            CaptureRing::open(&path, &config(10)),
            Err(AuditError::Locked { .. })
        ));
        drop(ring);
        let mut ring = CaptureRing::open(&path, &config(10)).expect("reopen");
        ring.push(
            2_000,
            0,
            Direction::Tx,
            Verdict::DroppedSpoof,
            60,
            &frame(0, 60),
        );
        let got = read_ring(&path).expect("read");
        let last = got.packets.last().expect("a packet");
        assert_eq!((last.seq, last.data.len()), (26, 60), "numbering continues");
    }

    #[test]
    fn a_torn_slot_is_skipped_and_a_new_geometry_starts_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(RING_FILE);
        let mut ring = CaptureRing::open(&path, &config(4)).expect("open");
        for i in 0..3u64 {
            ring.push(i, 0, Direction::Tx, Verdict::Forwarded, 80, &frame(i, 80));
        }
        drop(ring);
        let mut raw = fs::read(&path).expect("read");
        raw[HEADER + (SLOT_HEADER + 64) + SLOT_HEADER + 5] ^= 0xff; // data of the second slot
        fs::write(&path, raw).expect("write");
        let got = read_ring(&path).expect("read");
        assert_eq!(got.torn, 1);
        assert_eq!(
            got.packets.iter().map(|p| p.seq).collect::<Vec<_>>(),
            [1, 3]
        );
        let bigger = CaptureConfig {
            snaplen: 128,
            ..config(4)
        };
        drop(CaptureRing::open(&path, &bigger).expect("re-create"));
        let got = read_ring(&path).expect("read");
        assert!(got.packets.is_empty());
        assert_eq!(got.geometry.snaplen, 128);
        fs::write(&path, b"not a ring").expect("write");
        assert!(matches!(read_ring(&path), Err(AuditError::Format { .. })));
        let tiny = CaptureConfig {
            bytes: 100,
            ..CaptureConfig::default()
        };
        assert!(CaptureRing::open(&path, &tiny).is_err());
    }
}
