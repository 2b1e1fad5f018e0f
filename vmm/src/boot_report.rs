//! Start-up measurements taken when the guest reports its first instruction (boot timer).

use std::time::Instant;

/// What the VMM cost up to the guest's first instruction.
#[derive(Debug, Clone, Copy)]
pub struct BootReport {
    /// Wall time since the VMM process started its run.
    pub wall_ms: f64,
    /// CPU time (user + system, all threads) of the VMM process so far.
    pub cpu_ms: f64,
    /// Resident set of the process (including shared library and binary text).
    pub rss_kib: u64,
    /// Resident pages private to the process (anonymous memory, written data).
    pub private_kib: u64,
    /// Guest memory pages resident (all private).
    pub guest_resident_kib: u64,
}

impl BootReport {
    /// Resident memory that is not guest memory: the VMM's own overhead.
    pub fn overhead_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_resident_kib)
    }

    /// Private resident memory that is not guest memory: what each extra VMM process costs
    /// the host when the binary and libc text are shared between slivers.
    pub fn private_overhead_kib(&self) -> u64 {
        self.private_kib.saturating_sub(self.guest_resident_kib)
    }
}

fn cpu_ms() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the valid, properly sized buffer we pass.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return f64::NAN;
    }
    // SAFETY: getrusage succeeded, so the struct is initialised (and it was zeroed anyway).
    let usage = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// A `Name:  N kB` field of /proc/self/smaps_rollup.
fn smaps_field(rollup: &str, name: &str) -> u64 {
    rollup
        .lines()
        .find(|l| l.split(':').next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident KiB of host mappings `(address, length)`, via mincore(2).
pub fn resident_kib(ranges: &[(usize, usize)]) -> u64 {
    let page = 4096usize;
    let mut pages = 0u64;
    let mut vec = Vec::new();
    for &(addr, len) in ranges {
        let n = len.div_ceil(page);
        vec.clear();
        vec.resize(n, 0u8);
        // SAFETY: `addr..addr+len` is a live mapping owned by guest memory for the VM's
        // lifetime, page aligned (mmap), and `vec` has one byte per page of it.
        let rc = unsafe { libc::mincore(addr as *mut libc::c_void, len, vec.as_mut_ptr()) };
        if rc == 0 {
            pages += vec.iter().filter(|b| *b & 1 == 1).count() as u64;
        }
    }
    pages * (page as u64) / 1024
}

/// Measure now, against `start` and the guest memory mappings.
pub fn boot_report(start: Instant, guest_ranges: &[(usize, usize)]) -> BootReport {
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    BootReport {
        wall_ms: start.elapsed().as_secs_f64() * 1e3,
        cpu_ms: cpu_ms(),
        rss_kib: smaps_field(&rollup, "Rss"),
        private_kib: smaps_field(&rollup, "Private_Clean") + smaps_field(&rollup, "Private_Dirty"),
        guest_resident_kib: resident_kib(guest_ranges),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_pages_count_as_resident() {
        let mut buf = vec![0u8; 64 * 4096];
        for i in (0..buf.len()).step_by(4096) {
            buf[i] = 1;
        }
        // Heap buffers may not be page aligned: measure the aligned interior.
        let start = (buf.as_ptr() as usize).next_multiple_of(4096);
        let kib = resident_kib(&[(start, 32 * 4096)]);
        assert_eq!(kib, 32 * 4);
        let r = boot_report(Instant::now(), &[]);
        assert!(r.rss_kib > 0 && r.cpu_ms >= 0.0);
        assert!(r.private_kib > 0 && r.private_kib <= r.rss_kib);
        assert_eq!(r.overhead_kib(), r.rss_kib);
    }
}
