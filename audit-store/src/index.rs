//! The per-segment time and address index, written beside a segment when it is sealed:
//! for every block of about 32 KiB of records, its byte range, record count, earliest first
//! packet, latest last packet, highest sequence number, and a Bloom filter of its addresses.
//!
//! File: `"SVAI" | version u32 | block count u32 | CRC32 of the entries | entries | blooms`;
//! an entry is `offset u64 | len u32 | count u32 | min_first u64 | max_last u64 | max_seq u64`
//! (40 bytes), a bloom is its 1024 bytes and their CRC32. A query reads the entries, then only
//! the blooms and blocks of the entries that overlap its time window. An index that fails its
//! CRC is ignored (the segment is then scanned whole).

use std::fs::{self, File};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::bloom::{Bloom, BLOOM_BYTES};
use super::error::{AuditError, Result};
use super::record::FlowRecord;
use super::segment::{IndexFile, Segment};

const MAGIC: [u8; 4] = *b"SVAI";
const VERSION: u32 = 1;
/// A block is closed once it holds this many bytes of frames.
pub const BLOCK_BYTES: u64 = 32 * 1024;
const HEADER: usize = 16;
const ENTRY: usize = 40;
const BLOOM_ENTRY: usize = BLOOM_BYTES + 4;

/// Where a block of consecutive records is and what it spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
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
}

impl BlockEntry {
    /// Whether a record of this block may overlap `[from, to]`.
    pub fn overlaps(&self, from: u64, to: u64) -> bool {
        self.count > 0 && self.min_first <= to && self.max_last >= from
    }
}

/// A block as the builder keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIndex {
    /// Position and span.
    pub entry: BlockEntry,
    /// Addresses (source and destination) of its records.
    pub bloom: Bloom,
}

impl BlockIndex {
    fn new(offset: u64) -> Self {
        BlockIndex {
            entry: BlockEntry {
                offset,
                len: 0,
                count: 0,
                min_first: u64::MAX,
                max_last: 0,
                max_seq: 0,
            },
            bloom: Bloom::default(),
        }
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
        if matches!(&self.open, Some(b) if b.entry.offset + u64::from(b.entry.len) != offset) {
            self.close_block();
        }
        let open = self.open.get_or_insert_with(|| BlockIndex::new(offset));
        let block = &mut open.entry;
        block.len = block.len.saturating_add(len as u32);
        block.count += 1;
        block.min_first = block.min_first.min(rec.first_ns);
        block.max_last = block.max_last.max(rec.last_ns);
        block.max_seq = block.max_seq.max(rec.seq);
        let full = u64::from(block.len) >= BLOCK_BYTES;
        for a in rec.addrs.iter().flatten() {
            open.bloom.insert(a);
        }
        if full {
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

/// Write `blocks` (at least one) as the index of `seg`: temporary file, fsync, rename.
pub fn save(seg: &Segment, blocks: &[BlockIndex]) -> Result<IndexFile> {
    let min_first = blocks.iter().map(|b| b.entry.min_first).min().unwrap_or(0);
    let max_last = blocks.iter().map(|b| b.entry.max_last).max().unwrap_or(0);
    let mut entries = Vec::with_capacity(blocks.len() * ENTRY);
    for BlockIndex { entry: b, .. } in blocks {
        entries.extend_from_slice(&b.offset.to_le_bytes());
        entries.extend_from_slice(&b.len.to_le_bytes());
        entries.extend_from_slice(&b.count.to_le_bytes());
        entries.extend_from_slice(&b.min_first.to_le_bytes());
        entries.extend_from_slice(&b.max_last.to_le_bytes());
        entries.extend_from_slice(&b.max_seq.to_le_bytes());
    }
    let mut buf = Vec::with_capacity(HEADER + entries.len() + blocks.len() * BLOOM_ENTRY);
    buf.extend_from_slice(&MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(&entries).to_le_bytes());
    buf.extend_from_slice(&entries);
    for b in blocks {
        buf.extend_from_slice(&b.bloom.0[..]);
        buf.extend_from_slice(&crc32fast::hash(&b.bloom.0[..]).to_le_bytes());
    }
    let tmp = seg.index_tmp_path();
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()
    };
    write().map_err(|e| AuditError::io(&tmp, e))?;
    let path = seg.index_path(min_first, max_last);
    fs::rename(&tmp, &path).map_err(|e| AuditError::io(&path, e))?;
    Ok(IndexFile {
        path,
        min_first,
        max_last,
    })
}

/// An open index: its block entries, read whole; blooms read on demand.
#[derive(Debug)]
pub struct IndexReader {
    file: File,
    path: PathBuf,
    /// The blocks, in file order.
    pub blocks: Vec<BlockEntry>,
}

fn le(b: &[u8], at: usize, n: usize) -> u64 {
    b[at..at + n]
        .iter()
        .rev()
        .fold(0u64, |acc, x| (acc << 8) | u64::from(*x))
}

/// Open the index `idx`: `None` if it is unreadable or damaged.
pub fn open(idx: &IndexFile) -> Option<IndexReader> {
    let file = File::open(&idx.path).ok()?;
    let mut header = [0u8; HEADER];
    file.read_exact_at(&mut header, 0).ok()?;
    if header[..4] != MAGIC || le(&header, 4, 4) != u64::from(VERSION) {
        return None;
    }
    let count = usize::try_from(le(&header, 8, 4)).ok()?;
    let mut raw = vec![0u8; count.checked_mul(ENTRY)?];
    file.read_exact_at(&mut raw, HEADER as u64).ok()?;
    if u64::from(crc32fast::hash(&raw)) != le(&header, 12, 4) {
        return None;
    }
    let blocks = raw
        .chunks_exact(ENTRY)
        .map(|e| BlockEntry {
            offset: le(e, 0, 8),
            len: le(e, 8, 4) as u32,
            count: le(e, 12, 4) as u32,
            min_first: le(e, 16, 8),
            max_last: le(e, 24, 8),
            max_seq: le(e, 32, 8),
        })
        .collect();
    Some(IndexReader {
        file,
        path: idx.path.clone(),
        blocks,
    })
}

impl IndexReader {
    /// The Bloom filter of block `i`; `None` if unreadable or damaged (then assume a match).
    pub fn bloom(&self, i: usize) -> Option<Bloom> {
        let at = HEADER + self.blocks.len() * ENTRY + i * BLOOM_ENTRY;
        let mut raw = vec![0u8; BLOOM_ENTRY];
        if let Err(e) = self.file.read_exact_at(&mut raw, at as u64) {
            log::warn!("{}: bloom {i}: {e}", self.path.display());
            return None;
        }
        if u64::from(crc32fast::hash(&raw[..BLOOM_BYTES])) != le(&raw, BLOOM_BYTES, 4) {
            log::warn!("{}: bloom {i} is damaged", self.path.display());
            return None;
        }
        let mut bloom = Bloom::default();
        bloom.0.copy_from_slice(&raw[..BLOOM_BYTES]);
        Some(bloom)
    }

    /// The highest sequence number in the segment.
    pub fn max_seq(&self) -> u64 {
        self.blocks.iter().map(|b| b.max_seq).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    #[test]
    fn blocks_cover_the_records_and_survive_a_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = Segment::new(dir.path(), 7);
        std::fs::create_dir_all(seg.dir()).expect("day dir");
        let mut b = IndexBuilder::default();
        let mut offset = 0u64;
        let mut min_first = u64::MAX;
        for seq in 0..2000 {
            let rec = synth::flow(seq, "s", 1_000_000_000 + seq * 1_000);
            min_first = min_first.min(rec.first_ns);
            b.add(&IndexKey::of(&rec), offset, 100);
            offset += 100;
        }
        let blocks = b.finish();
        assert!(blocks.len() > 1);
        assert_eq!(blocks.iter().map(|b| b.entry.count).sum::<u32>(), 2000);
        assert_eq!(blocks[1].entry.offset, u64::from(blocks[0].entry.len));
        let file = save(&seg, &blocks).expect("save");
        assert_eq!(file.min_first, min_first);
        assert_eq!(file.max_last, 1_000_000_000 + 1999 * 1_000);
        let idx = open(&file).expect("open");
        assert_eq!(idx.max_seq(), 1999);
        let probe = synth::flow(1500, "s", 0).dst.expect("addr");
        let (i, holder) = idx
            .blocks
            .iter()
            .enumerate()
            .find(|(_, b)| b.offset <= 150_000 && 150_000 < b.offset + u64::from(b.len))
            .expect("block of record 1500");
        assert_eq!(*holder, blocks[i].entry);
        assert!(idx.bloom(i).expect("bloom").may_contain(&probe));
        let mut raw = fs::read(&file.path).expect("read");
        let last = raw.len() - 10;
        raw[last] ^= 1;
        raw[20] ^= 1;
        fs::write(&file.path, raw).expect("write");
        assert!(open(&file).is_none(), "a damaged index must be ignored");
    }
}
