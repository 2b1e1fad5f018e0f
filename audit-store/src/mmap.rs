//! A shared, writable memory mapping of a whole file (for the capture ring): stores land in the
//! page cache at once, so they survive the process being killed.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A `MAP_SHARED` read-write mapping of `len` bytes of a file, unmapped on drop.
#[derive(Debug)]
pub struct SharedMap {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone (no aliases are handed out beyond borrows
// of `self`), so moving it to another thread is as safe as moving a `Vec<u8>`.
unsafe impl Send for SharedMap {}

impl SharedMap {
    /// Map the first `len` (> 0) bytes of `file`, which must be open read-write and that long.
    pub fn new(file: &File, len: usize) -> io::Result<Self> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"));
        }
        // SAFETY: a fresh mapping at an address of the kernel's choosing; it aliases no Rust
        // memory. The descriptor is valid for the duration of the call.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // No MADV_POPULATE_WRITE: faulting all of a 64 MiB ring in at open took ~75 ms of a
        // sliver's start and kept 64 MiB of dirty page cache per sliver, used or not. Pages of
        // the (fallocated, so never short of disk) file fault in during the ring's first lap,
        // a few MiB ahead of its writer (`capture::ahead`; docs/benchmarks.md, "Sliver start").
        Ok(SharedMap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The mapping's start address (for `madvise(2)`).
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// The mapped bytes.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live mapping of `len` readable and writable bytes, owned by
        // `self`; the `&mut self` borrow makes this the only reference for its lifetime. The
        // ring file is flock'ed by its writer, so no other writer truncates it under us.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// Schedule write-back of the mapping to disk (MS_ASYNC; returns at once).
    pub fn flush_async(&self) -> io::Result<()> {
        // SAFETY: msync over exactly the mapping this value owns.
        let rc = unsafe { libc::msync(self.ptr.cast(), self.len, libc::MS_ASYNC) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping this value owns; no borrow of it outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
