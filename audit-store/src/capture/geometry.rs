//! A capture ring file's header and shape: `"SVCR" | version u32 | slot size u32 | slots u32 |
//! snaplen u32` (little-endian) in a 4096-byte header, then `slots` slots of `slot size` bytes.

use super::slot;

const MAGIC: [u8; 4] = *b"SVCR";
/// The layout [`super::CaptureRing`] writes (see [`slot`]).
pub(super) const VERSION: u32 = 2;
/// Bytes before the first slot.
pub(super) const HEADER: usize = 4096;

/// The geometry of a ring file.
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
    /// The current version's geometry for a file of `bytes` (`None` when it would hold no
    /// slot, or `snaplen` is 0). Slots are multiples of 8 bytes, so that their commit words
    /// are aligned.
    pub(super) fn of(snaplen: u16, bytes: u64) -> Option<Self> {
        let slot_size = slot::HEADER + usize::from(snaplen).div_ceil(8) * 8 + slot::TRAILER;
        let slots = usize::try_from(bytes).ok()?.checked_sub(HEADER)? / slot_size;
        // The header holds the count in 32 bits.
        let fits = u32::try_from(slots).is_ok();
        (slots > 0 && fits && snaplen > 0).then_some(RingGeometry {
            slot_size,
            slots,
            snaplen,
        })
    }

    /// Bytes of the whole file.
    pub(super) fn file_len(&self) -> usize {
        HEADER + self.slots * self.slot_size
    }

    /// Byte offset of the slot that packet `seq` (from 1) goes to.
    pub(super) fn slot_at(&self, seq: u64) -> usize {
        HEADER + ((seq - 1) % self.slots as u64) as usize * self.slot_size
    }

    /// The file header (its first 20 bytes; the rest is zero).
    pub(super) fn header(&self) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&VERSION.to_le_bytes());
        h[8..12].copy_from_slice(&(self.slot_size as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(self.slots as u32).to_le_bytes());
        h[16..20].copy_from_slice(&u32::from(self.snaplen).to_le_bytes());
        h
    }

    /// The version and geometry of the ring file `buf` (all of it), if it is one of a
    /// version this code reads (1 or 2) and its length matches its header.
    pub(super) fn parse(buf: &[u8]) -> Option<(u32, Self)> {
        let word = |at: usize| u32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
        if buf.len() < HEADER || buf[..4] != MAGIC {
            return None;
        }
        let version = word(4);
        let trailer = match version {
            1 => 0,
            VERSION => slot::TRAILER,
            _ => return None,
        };
        let g = RingGeometry {
            slot_size: word(8) as usize,
            slots: word(12) as usize,
            snaplen: u16::try_from(word(16)).ok()?,
        };
        let sane = g.slot_size >= slot::HEADER + usize::from(g.snaplen) + trailer && g.slots > 0;
        let len = g.slots.checked_mul(g.slot_size)?.checked_add(HEADER)?;
        (sane && buf.len() == len).then_some((version, g))
    }
}
