//! Faulting a capture ring's pages in ahead of its writer, off the packet path.
//!
//! A ring's pages fault in on their first store: in a fresh 64 MiB ring, 16 384 page faults
//! spread over a sliver's first ~400 000 packets, each taken by the packet path (page cache
//! allocation, zeroing, the file system's `page_mkwrite`). That made the first lap 16–23 %
//! slower than the steady state (`net_path 2000 audit`, docs/benchmarks.md). So, during the
//! first lap after the ring is opened, [`super::CaptureRing::push`] hands out
//! [`Populate`] requests that keep [`LEAD`] bytes ahead of the writer faulted in; the VMM runs
//! them on its audit writer thread. Only what the writer is about to reach is faulted in: a
//! ring holds in memory what has been written and [`LEAD`] bytes more.

/// How far ahead of the writer the ring is kept faulted in, in bytes.
pub const LEAD: usize = 4 << 20;
/// Bytes asked for at a time once the writer is under way.
pub const CHUNK: usize = 1 << 20;

/// A range of a ring's mapping to fault in, writable, without changing its bytes
/// (`madvise(2)` `MADV_POPULATE_WRITE`, Linux 5.14), on a thread other than the writer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Populate {
    /// Start address (page-aligned) in the ring's mapping.
    addr: usize,
    /// Length in bytes.
    len: usize,
}

impl Populate {
    /// Fault the range in. Errors (an older kernel, a ring already unmapped) are ignored: a
    /// page not faulted in here faults in on the writer's first store to it, as without this.
    /// Populating never writes the bytes, so whatever is mapped there by then is unchanged.
    pub fn run(self) {
        // SAFETY: madvise(2) takes the range by value and reads or writes no memory of ours;
        // MADV_POPULATE_WRITE only faults pages in (an unmapped range is an error, not UB).
        unsafe {
            libc::madvise(
                self.addr as *mut libc::c_void,
                self.len,
                libc::MADV_POPULATE_WRITE,
            )
        };
    }

    /// The range: start address and length in bytes.
    #[cfg(test)]
    pub(super) fn range(self) -> (usize, usize) {
        (self.addr, self.len)
    }
}

/// What of the first lap after open is still to be faulted in.
#[derive(Debug)]
pub(super) struct Ahead {
    /// Offset in the mapping of the next range to ask for.
    next: usize,
    /// Bytes of the lap not asked for yet (the whole file at open).
    left: usize,
    /// Bytes to ask for now: [`LEAD`] at the first packet, [`CHUNK`] every `CHUNK` bytes of
    /// slots after it; what the file's end cut off a request is asked for at the next packet,
    /// from the start of the file.
    owed: usize,
    /// Pushes until the next [`CHUNK`] is owed.
    until: usize,
    /// Pushes that move the writer [`CHUNK`] bytes.
    per_chunk: usize,
    file_len: usize,
}

impl Ahead {
    /// The lap of a ring of `file_len` bytes and `slot_size`-byte slots whose writer starts
    /// at offset `start`.
    pub(super) fn new(start: usize, file_len: usize, slot_size: usize) -> Self {
        Ahead {
            next: start - start % 4096, // madvise(2) takes page-aligned addresses
            left: file_len,
            owed: LEAD,
            until: 0,
            per_chunk: (CHUNK / slot_size.max(1)).max(1),
            file_len,
        }
    }

    /// One packet is being written: the range of the mapping at `base` to fault in now, if
    /// any, until the whole file has been asked for once.
    #[inline]
    pub(super) fn step(&mut self, base: usize) -> Option<Populate> {
        if self.left == 0 {
            return None;
        }
        if self.owed == 0 {
            if self.until > 0 {
                self.until -= 1;
                return None;
            }
            self.owed = CHUNK;
        }
        let len = self.owed.min(self.left).min(self.file_len - self.next);
        let request = Populate {
            addr: base + self.next,
            len,
        };
        self.next += len;
        self.left -= len;
        self.owed -= len;
        if self.next == self.file_len {
            // The file's length need not be a page multiple: from its start, whole pages.
            self.next = 0;
            self.owed = self.owed.next_multiple_of(4096);
        }
        if self.owed == 0 {
            self.until = self.per_chunk - 1;
        }
        Some(request)
    }
}
