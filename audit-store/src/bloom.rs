//! A fixed-size Bloom filter of IP addresses, one per block of records in the segment index,
//! so that a query for one address reads only the blocks that may hold it.

use std::net::IpAddr;

/// Bytes per filter (8192 bits: about 12 bits per address for a 32 KiB block).
pub const BLOOM_BYTES: usize = 1024;
const BITS: u64 = (BLOOM_BYTES * 8) as u64;
const HASHES: u64 = 4;

/// A Bloom filter over addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloom(pub Box<[u8; BLOOM_BYTES]>);

impl Default for Bloom {
    fn default() -> Self {
        Bloom(Box::new([0; BLOOM_BYTES]))
    }
}

/// FNV-1a over the address bytes, then split into two hashes for double hashing.
fn hashes(addr: &IpAddr) -> (u64, u64) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    match addr {
        IpAddr::V4(a) => eat(&a.octets()),
        IpAddr::V6(a) => eat(&a.octets()),
    }
    // Final avalanche (splitmix64) so both halves are well mixed.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h & 0xffff_ffff, (h >> 32) | 1)
}

impl Bloom {
    /// Add `addr`.
    pub fn insert(&mut self, addr: &IpAddr) {
        let (a, b) = hashes(addr);
        for i in 0..HASHES {
            let bit = a.wrapping_add(i.wrapping_mul(b)) % BITS;
            self.0[(bit / 8) as usize] |= 1 << (bit % 8);
        }
    }

    /// False if `addr` was certainly never added.
    pub fn may_contain(&self, addr: &IpAddr) -> bool {
        let (a, b) = hashes(addr);
        (0..HASHES).all(|i| {
            let bit = a.wrapping_add(i.wrapping_mul(b)) % BITS;
            self.0[(bit / 8) as usize] & (1 << (bit % 8)) != 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let mut b = Bloom::default();
        for i in 0..680u32 {
            b.insert(&IpAddr::from((0x0a00_0000 + i).to_be_bytes()));
        }
        for i in 0..680u32 {
            assert!(b.may_contain(&IpAddr::from((0x0a00_0000 + i).to_be_bytes())));
        }
        let fp = (0..10_000u32)
            .filter(|i| b.may_contain(&IpAddr::from((0xc000_0000 + i).to_be_bytes())))
            .count();
        assert!(fp < 500, "{fp} false positives in 10000");
    }
}
