//! Reading one virtio-blk request from its descriptor chain and checking it (virtio 1.2
//! section 5.2.6): the device-readable part holds the 16-byte header and, for OUT, DISCARD
//! and WRITE_ZEROES, the data; the device-writable part holds, for IN and GET_ID, the data,
//! and always ends with the status byte. Descriptor boundaries may fall anywhere.
//!
//! | what is wrong | answer |
//! |---|---|
//! | no device-writable last byte (no status), a broken chain, a buffer outside memory | chain returned unanswered, `malformed_chains` |
//! | a device-readable descriptor after a device-writable one; a header shorter than 16 bytes | `VIRTIO_BLK_S_IOERR` |
//! | IN/OUT data empty, not whole sectors, past the capacity, or in the wrong direction | `VIRTIO_BLK_S_IOERR` |
//! | OUT, DISCARD, WRITE_ZEROES on a read-only disk | `VIRTIO_BLK_S_IOERR` |
//! | FLUSH, DISCARD, WRITE_ZEROES not negotiated (FLUSH is not offered on a read-only disk); an unknown type; DISCARD with the unmap flag, any other flag | `VIRTIO_BLK_S_UNSUPP` |
//! | DISCARD/WRITE_ZEROES ranges: not whole 16-byte entries, none or more than 64, empty, longer than the limit or past the capacity | `VIRTIO_BLK_S_IOERR` |

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

use super::{HEADER_LEN, MAX_RANGES, MAX_RANGE_SECTORS, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::feature;
use crate::virtio::iovec::IovecBuf;

/// A virtio-blk status byte (`VIRTIO_BLK_S_*`).
pub type Status = u8;

/// Where a request's status byte is: the last byte of its chain, mapped (checked with
/// `get_slice` when the chain was read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusByte(usize);

impl StatusByte {
    /// Write `status` there.
    ///
    /// # Safety
    /// The guest memory the chain was read from must still be mapped (it is while the device
    /// holds it).
    pub unsafe fn set(self, status: Status) {
        // SAFETY: the caller keeps the mapping; the byte lies in a checked device-writable
        // descriptor.
        unsafe { std::ptr::write_volatile(self.0 as *mut u8, status) }
    }
}

/// `VIRTIO_BLK_S_IOERR` (a test checks it against `virtio_blk.h`).
pub const IOERR: Status = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const UNSUPP: Status = 2;

/// One DISCARD or WRITE_ZEROES range (`struct virtio_blk_discard_write_zeroes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    /// First sector.
    pub sector: u64,
    /// Sectors.
    pub sectors: u32,
    /// WRITE_ZEROES may leave a hole (the unmap flag).
    pub unmap: bool,
}

/// What a valid request asks for; its data is in [`RequestBuf::iovs`] or
/// [`RequestBuf::ranges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// VIRTIO_BLK_T_IN: read into the iovecs from `sector`.
    Read {
        /// First sector.
        sector: u64,
    },
    /// VIRTIO_BLK_T_OUT: write the iovecs at `sector`.
    Write {
        /// First sector.
        sector: u64,
    },
    /// VIRTIO_BLK_T_FLUSH.
    Flush,
    /// VIRTIO_BLK_T_GET_ID: the serial into the iovecs.
    GetId,
    /// VIRTIO_BLK_T_DISCARD: the first `n` ranges.
    Discard(usize),
    /// VIRTIO_BLK_T_WRITE_ZEROES: the first `n` ranges.
    WriteZeroes(usize),
}

/// A chain read as a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid request: do `op` with `data_len` bytes, then write the status at `status`.
    Valid {
        /// The operation.
        op: Op,
        /// Bytes of data (the iovecs' total).
        data_len: usize,
        /// Where the status byte goes.
        status: StatusByte,
    },
    /// A request to answer at once with status `code` at `status`.
    Refused {
        /// Where the status byte goes.
        status: StatusByte,
        /// `IOERR` or `UNSUPP`.
        code: Status,
        /// Why, for the log.
        why: &'static str,
    },
    /// Not answerable: returned to the driver without a status.
    Malformed(&'static str),
}

/// What a disk offers requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Capacity in sectors.
    pub sectors: u64,
    /// Writes refused.
    pub read_only: bool,
    /// Features the driver accepted.
    pub acked: u64,
}

/// One descriptor of the chain being read, mapped.
#[derive(Debug, Clone, Copy)]
struct Desc {
    /// Where its `len` bytes are in this process (checked with `get_slice` when read; valid
    /// while the device holds guest memory, that is for the whole request).
    host: usize,
    len: usize,
    writable: bool,
}

/// The device's buffers for reading requests, allocated once.
#[derive(Debug)]
pub struct RequestBuf {
    descs: Vec<Desc>,
    /// The data iovecs of the last valid request (into guest memory).
    pub(crate) iovs: IovecBuf,
    /// The ranges of the last valid DISCARD or WRITE_ZEROES.
    pub ranges: [Range; MAX_RANGES as usize],
}

impl Default for RequestBuf {
    fn default() -> Self {
        Self {
            descs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            iovs: IovecBuf::with_capacity(usize::from(QUEUE_SIZE)),
            ranges: [Range::default(); MAX_RANGES as usize],
        }
    }
}

/// Read and check the request in `chain` (in guest memory `mem`) for a disk `target`,
/// filling `buf`.
pub fn parse(
    chain: &mut DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    buf: &mut RequestBuf,
    target: Target,
) -> Parsed {
    buf.descs.clear();
    buf.iovs.0.clear();
    let mut more = true;
    for d in chain.by_ref() {
        more = d.has_next();
        let len = d.len() as usize;
        let host = match mem.get_slice(d.addr(), len) {
            Ok(slice) => slice.ptr_guard_mut().as_ptr() as usize,
            Err(_) if len == 0 => 0,
            Err(_) => return Parsed::Malformed("buffer outside guest memory"),
        };
        if buf.descs.len() == buf.descs.capacity() {
            return Parsed::Malformed("more descriptors than the queue holds");
        }
        buf.descs.push(Desc {
            host,
            len,
            writable: d.is_write_only(),
        });
    }
    if more {
        return Parsed::Malformed("broken chain (loop, bad next index or indirect table)");
    }
    let status = match buf.descs.last() {
        Some(last) if last.writable && last.len > 0 => StatusByte(last.host + last.len - 1),
        _ => return Parsed::Malformed("no device-writable status byte at the end"),
    };
    let refuse = |code, why| Parsed::Refused { status, code, why };
    let first_writable = buf
        .descs
        .iter()
        .position(|d| d.writable)
        .unwrap_or(buf.descs.len());
    if buf.descs[first_writable..].iter().any(|d| !d.writable) {
        return refuse(
            IOERR,
            "device-readable descriptor after a device-writable one",
        );
    }
    let (readable, writable) = buf.descs.split_at(first_writable);
    let mut header = [0u8; HEADER_LEN];
    if read_prefix(readable, &mut header).is_none() {
        return refuse(IOERR, "header shorter than 16 bytes or unreadable");
    }
    let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let mut sector_bytes = [0u8; 8];
    sector_bytes.copy_from_slice(&header[8..16]);
    let sector = u64::from_le_bytes(sector_bytes);
    // The data: readable bytes after the header; writable bytes before the status byte.
    let readable_data: usize = readable.iter().map(|d| d.len).sum::<usize>() - HEADER_LEN;
    let writable_data: usize = writable.iter().map(|d| d.len).sum::<usize>() - 1;
    let has = |bit: u32| target.acked & feature(bit) != 0;
    let op = match kind {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            let write = kind == VIRTIO_BLK_T_OUT;
            let (len, wrong_way) = if write {
                (readable_data, writable_data)
            } else {
                (writable_data, readable_data)
            };
            if write && target.read_only {
                return refuse(IOERR, "write to a read-only disk");
            }
            if wrong_way != 0 {
                return refuse(IOERR, "data in the wrong direction");
            }
            let len = u64::try_from(len).unwrap_or(u64::MAX);
            if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
                return refuse(IOERR, "data empty or not whole 512-byte sectors");
            }
            if !in_range(sector, len / SECTOR_SIZE, target.sectors) {
                return refuse(IOERR, "past the end of the disk");
            }
            if write {
                Op::Write { sector }
            } else {
                Op::Read { sector }
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if !has(VIRTIO_BLK_F_FLUSH) {
                return refuse(UNSUPP, "FLUSH not negotiated");
            }
            if readable_data != 0 || writable_data != 0 {
                return refuse(IOERR, "FLUSH with data");
            }
            Op::Flush
        }
        VIRTIO_BLK_T_GET_ID => {
            if readable_data != 0 || writable_data == 0 {
                return refuse(IOERR, "GET_ID without a writable buffer");
            }
            Op::GetId
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = kind == VIRTIO_BLK_T_DISCARD;
            let feature_bit = if discard {
                VIRTIO_BLK_F_DISCARD
            } else {
                VIRTIO_BLK_F_WRITE_ZEROES
            };
            if !has(feature_bit) {
                return refuse(UNSUPP, "DISCARD/WRITE_ZEROES not negotiated");
            }
            if target.read_only {
                return refuse(IOERR, "DISCARD/WRITE_ZEROES on a read-only disk");
            }
            if writable_data != 0 {
                return refuse(IOERR, "DISCARD/WRITE_ZEROES with writable data");
            }
            match read_ranges(readable, readable_data, discard, target, &mut buf.ranges) {
                Ok(n) if discard => Op::Discard(n),
                Ok(n) => Op::WriteZeroes(n),
                Err((code, why)) => return refuse(code, why),
            }
        }
        _ => return refuse(UNSUPP, "unknown request type"),
    };
    // The data iovecs: for writes and ranges the readable part after the header, for reads
    // and GET_ID the writable part before the status byte.
    let (data, skip, len) = match op {
        Op::Write { .. } => (readable, HEADER_LEN, readable_data),
        Op::Read { .. } | Op::GetId => (writable, 0, writable_data),
        Op::Flush | Op::Discard(_) | Op::WriteZeroes(_) => (readable, 0, 0),
    };
    describe(data, skip, len, &mut buf.iovs);
    Parsed::Valid {
        op,
        data_len: len,
        status,
    }
}

/// Whether `count` sectors from `sector` lie within a disk of `capacity` sectors.
fn in_range(sector: u64, count: u64, capacity: u64) -> bool {
    sector.checked_add(count).is_some_and(|end| end <= capacity)
}

/// Copy the first `out.len()` bytes of the regions `descs` into `out` (volatile reads: the
/// guest may change its memory meanwhile; what was copied is what is checked and used).
fn read_prefix(descs: &[Desc], out: &mut [u8]) -> Option<()> {
    let mut done = 0;
    for d in descs {
        if done == out.len() {
            break;
        }
        let n = d.len.min(out.len() - done);
        for (i, byte) in out[done..done + n].iter_mut().enumerate() {
            // SAFETY: `d.host` maps `d.len` bytes of guest memory (checked by `get_slice`
            // when the chain was read) and `i < n <= d.len`.
            *byte = unsafe { std::ptr::read_volatile((d.host + i) as *const u8) };
        }
        done += n;
    }
    (done == out.len()).then_some(())
}

/// iovecs for `len` bytes of the regions `descs`, after the first `skip`.
fn describe(descs: &[Desc], skip: usize, len: usize, iovs: &mut IovecBuf) {
    let (mut skip, mut left) = (skip, len);
    for d in descs {
        if left == 0 {
            break;
        }
        if skip >= d.len {
            skip -= d.len;
            continue;
        }
        let n = (d.len - skip).min(left);
        iovs.0.push(libc::iovec {
            iov_base: (d.host + skip) as *mut libc::c_void,
            iov_len: n,
        });
        left -= n;
        skip = 0;
    }
}

/// Read and check the `struct virtio_blk_discard_write_zeroes` entries in the `len` readable
/// bytes after the header.
fn read_ranges(
    readable: &[Desc],
    len: usize,
    discard: bool,
    target: Target,
    out: &mut [Range; MAX_RANGES as usize],
) -> Result<usize, (Status, &'static str)> {
    const ENTRY: usize = 16;
    let count = len / ENTRY;
    if !len.is_multiple_of(ENTRY) || count == 0 || count > out.len() {
        return Err((
            IOERR,
            "ranges not whole 16-byte entries, none, or more than 64",
        ));
    }
    let mut raw = [0u8; HEADER_LEN + MAX_RANGES as usize * ENTRY];
    read_prefix(readable, &mut raw[..HEADER_LEN + len]).ok_or((IOERR, "ranges unreadable"))?;
    for (i, e) in raw[HEADER_LEN..HEADER_LEN + len]
        .chunks_exact(ENTRY)
        .enumerate()
    {
        let mut s = [0u8; 8];
        s.copy_from_slice(&e[..8]);
        let sector = u64::from_le_bytes(s);
        let sectors = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        let flags = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        // virtio 1.2 section 5.2.6.2: bit 0 is unmap, only for WRITE_ZEROES.
        let allowed = if discard { 0 } else { 1 };
        if flags & !allowed != 0 {
            return Err((UNSUPP, "range flags not supported"));
        }
        if sectors == 0 || sectors > MAX_RANGE_SECTORS {
            return Err((IOERR, "range empty or longer than the limit"));
        }
        if !in_range(sector, u64::from(sectors), target.sectors) {
            return Err((IOERR, "range past the end of the disk"));
        }
        out[i] = Range {
            sector,
            sectors,
            unmap: flags & 1 != 0,
        };
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP};

    use super::*;

    #[test]
    fn statuses_are_virtio_blk_h() {
        assert_eq!(u32::from(IOERR), VIRTIO_BLK_S_IOERR);
        assert_eq!(u32::from(UNSUPP), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn ranges_that_overflow_are_out_of_range() {
        assert!(in_range(0, 8, 8));
        assert!(!in_range(1, 8, 8));
        assert!(!in_range(u64::MAX, 1, u64::MAX));
    }
}
