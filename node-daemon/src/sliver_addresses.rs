//! Slivers' addresses from the node's `--sliver-net`: a /30 per sliver (network, host side
//! `.1`, guest `.2`, broadcast), the lowest one no other sliver's subnet overlaps; and the
//! check that a sliver's given subnet overlaps no other sliver's. The records keep what was
//! allocated (so it survives restarts), and a deleted sliver's subnet is free again.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The prefix length of an allocated subnet.
pub const SLIVER_PREFIX: u8 = 30;

/// Whether `a` and `b` share an address.
pub fn overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The lowest /30 of `pool` that overlaps none of `taken`.
pub fn allocate(pool: Ipv4Net, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    pool.subnets(SLIVER_PREFIX)
        .ok()?
        .find(|candidate| !taken.iter().any(|t| overlap(*candidate, *t)))
}

/// The (guest, host) addresses of an allocated subnet.
pub fn addresses(subnet: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(subnet.network());
    (Ipv4Addr::from(base + 2), Ipv4Addr::from(base + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    #[test]
    fn lowest_free_slash_30_never_twice() {
        let pool = net("10.9.0.0/28");
        let mut taken = Vec::new();
        let mut got = Vec::new();
        while let Some(n) = allocate(pool, &taken) {
            taken.push(n);
            got.push(n.to_string());
        }
        assert_eq!(
            got,
            ["10.9.0.0/30", "10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"]
        );
        // A freed subnet is the next one given; a given /24 elsewhere is skipped around.
        taken.remove(1);
        assert_eq!(allocate(pool, &taken), Some(net("10.9.0.4/30")));
        assert_eq!(allocate(net("10.9.0.0/29"), &[net("10.9.0.0/24")]), None);
        assert_eq!(
            addresses(net("10.9.0.4/30")),
            (
                "10.9.0.6".parse().expect("ip"),
                "10.9.0.5".parse().expect("ip")
            )
        );
    }

    #[test]
    fn overlap_is_symmetric_and_exact() {
        assert!(overlap(net("10.0.0.0/8"), net("10.1.2.0/30")));
        assert!(overlap(net("10.1.2.0/30"), net("10.0.0.0/8")));
        assert!(!overlap(net("10.1.2.0/30"), net("10.1.2.4/30")));
    }
}
