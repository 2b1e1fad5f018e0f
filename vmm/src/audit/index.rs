//! The per-segment time and address index, written beside a segment when it is sealed:
//! for every block of about 32 KiB of records, its byte range, record count, earliest first
//! packet, latest last packet and a Bloom filter of its addresses.
//!
//! File: `"SVAI" | version u32 | block count u32 | blocks... | CRC32 of all before`, each
//! block `offset u64 | len u32 | count u32 | min_first u64 | max_last u64 | max_seq u64 |
//! bloom`. An index that fails its CRC is ignored (the segment is then scanned).

use std::fs::{self, File};
use std::io::Write;
use std::net::IpAddr;

use super::bloom::{Bloom, BLOOM_BYTES};
use super::error::{AuditError, Result};
use super::record::FlowRecord;
use super::segment::Segment;

const MAGIC: [u8; 4] = *b"SVAI";
const VERSION: u32 = 1;
/// A block is closed once it holds this many bytes of frames.
pub const BLOCK_BYTES: u64 = 32 * 1024;
const BLOCK_ENTRY: usize = 8 + 4 + 4 + 8 + 8 + 8 + BLOOM_BYTES;

/// One block of consecutive records in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    /// Byte offset of the first frame.
    pub offset: u64,
    /// Bytes of frames.
    pub len: u32,
    /// Records.
    pub count: u32,
    /// Earliest first-packet time.
    pub min_first: u64,
    /// Latest last-packet time.
    pub max_last: u64,
    /// Highest sequence number.
    pub max_seq: u64,
    /// Addresses (source and destination) of its records.
    pub bloom: Bloom,
}

impl BlockIndex {
    fn new(offset: u64) -> Self {
        BlockIndex {
            offset,
            len: 0,
            count: 0,
            min_first: u64::MAX,
            max_last: 0,
            max_seq: 0,
            bloom: Bloom::default(),
        }
    }

    /// Whether a record of this block may overlap `[from, to]`.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.count > 0 && self.min_first <= to && self.max_last >= from
    }
}

/// What the index keeps of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexKey {
    /// Sequence number.
    pub seq: u64,
    /// First packet.
    pub first_ns: u64,
    /// Last packet.
    pub last_ns: u64,
    /// Source and destination address.
    pub addrs: [Option<IpAddr>; 2],
}

impl IndexKey {
    /// The key of `rec`.
    pub fn of(rec: &FlowRecord) -> Self {
        IndexKey {
            seq: rec.seq,
            first_ns: rec.first_ns,
            last_ns: rec.last_ns,
            addrs: [rec.src, rec.dst],
        }
    }
}

/// Builds the index of a segment as frames are appended (or found by recovery).
#[derive(Debug, Default)]
pub struct IndexBuilder {
    /// Closed blocks.
    pub blocks: Vec<BlockIndex>,
    open: Option<BlockIndex>,
}

impl IndexBuilder {
    /// Account for the record `rec`, framed in `len` bytes at `offset`.
    pub fn add(&mut self, rec: &IndexKey, offset: u64, len: usize) {
        if matches!(&self.open, Some(b) if b.offset + u64::from(b.len) != offset) {
            self.close_block();
        }
        let block = self.open.get_or_insert_with(|| BlockIndex::new(offset));
        block.len = block.len.saturating_add(len as u32);
        block.count += 1;
        block.min_first = block.min_first.min(rec.first_ns);
        block.max_last = block.max_last.max(rec.last_ns);
        block.max_seq = block.max_seq.max(rec.seq);
        for a in rec.addrs.iter().flatten() {
            block.bloom.insert(a);
        }
        if u64::from(block.len) >= BLOCK_BYTES {
            self.close_block();
        }
    }

    /// Close the open block (a gap, i.e. a skipped corrupt record, closes it too, so every
    /// block is a contiguous run of valid frames).
    pub fn close_block(&mut self) {
        if let Some(b) = self.open.take() {
            self.blocks.push(b);
        }
    }

    /// All blocks, the open one closed.
    pub fn finish(mut self) -> Vec<BlockIndex> {
        self.close_block();
        self.blocks
    }
}

/// Write `blocks` as the index of `seg` (temporary file, fsync, rename).
pub fn save(seg: &Segment, blocks: &[BlockIndex]) -> Result<()> {
    let mut buf = Vec::with_capacity(12 + blocks.len() * BLOCK_ENTRY + 4);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for b in blocks {
        buf.extend_from_slice(&b.offset.to_le_bytes());
        buf.extend_from_slice(&b.len.to_le_bytes());
        buf.extend_from_slice(&b.count.to_le_bytes());
        buf.extend_from_slice(&b.min_first.to_le_bytes());
        buf.extend_from_slice(&b.max_last.to_le_bytes());
        buf.extend_from_slice(&b.max_seq.to_le_bytes());
        buf.extend_from_slice(&b.bloom.0[..]);
    }
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let tmp = seg.index_tmp_path();
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()
    };
    write().map_err(|e| AuditError::io(&tmp, e))?;
    fs::rename(&tmp, seg.index_path()).map_err(|e| AuditError::io(seg.index_path(), e))
}

/// The index of `seg`: `None` if it has none or it is damaged.
pub fn load(seg: &Segment) -> Option<Vec<BlockIndex>> {
    let buf = fs::read(seg.index_path()).ok()?;
    parse(&buf)
}

fn parse(buf: &[u8]) -> Option<Vec<BlockIndex>> {
    let body_len = buf.len().checked_sub(4)?;
    let (body, crc) = buf.split_at(body_len);
    if body.len() < 12 || body[..4] != MAGIC || crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let le = |at: usize, n: usize| -> u64 {
        body[at..at + n]
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    };
    if le(4, 4) != u64::from(VERSION) {
        return None;
    }
    let count = le(8, 4) as usize;
    if body.len() != 12 + count * BLOCK_ENTRY {
        return None;
    }
    let mut blocks = Vec::with_capacity(count);
    for i in 0..count {
        let at = 12 + i * BLOCK_ENTRY;
        let mut bloom = Bloom::default();
        bloom.0.copy_from_slice(&body[at + 40..at + BLOCK_ENTRY]);
        blocks.push(BlockIndex {
            offset: le(at, 8),
            len: le(at + 8, 4) as u32,
            count: le(at + 12, 4) as u32,
            min_first: le(at + 16, 8),
            max_last: le(at + 24, 8),
            max_seq: le(at + 32, 8),
            bloom,
        });
    }
    Some(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::synth;

    #[test]
    fn blocks_cover_the_records_and_survive_a_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = Segment::new(dir.path(), 7);
        let mut b = IndexBuilder::default();
        let mut offset = 0u64;
        for seq in 0..2000 {
            let rec = synth::flow(seq, "s", 1_000_000_000 + seq * 1_000);
            b.add(&IndexKey::of(&rec), offset, 100);
            offset += 100;
        }
        let blocks = b.finish();
        assert!(blocks.len() > 1);
        assert_eq!(blocks.iter().map(|b| b.count).sum::<u32>(), 2000);
        assert_eq!(blocks[1].offset, u64::from(blocks[0].len));
        let probe = synth::flow(1500, "s", 0).dst.expect("addr");
        let holder = blocks
            .iter()
            .find(|b| b.offset <= 150_000 && 150_000 < b.offset + u64::from(b.len))
            .expect("block of record 1500");
        assert!(holder.bloom.may_contain(&probe));
        save(&seg, &blocks).expect("save");
        assert_eq!(load(&seg), Some(blocks));
        let mut raw = fs::read(seg.index_path()).expect("read");
        raw[20] ^= 1;
        fs::write(seg.index_path(), raw).expect("write");
        assert_eq!(load(&seg), None, "a damaged index must be ignored");
    }
}
