//! virtio-net configuration space and MAC addresses.

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address string that is not six hex octets separated by colons.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("mac={0:?}: expected six hex octets like 02:00:00:00:00:01")]
pub struct BadMac(pub String);

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(s: &str) -> Result<Self, BadMac> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(|| BadMac(s.into()))?;
            if part.len() != 2 {
                return Err(BadMac(s.into()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadMac(s.into()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(s.into()));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (e.g. a device index).
    pub fn local(seed: u32) -> Self {
        let b = seed.to_be_bytes();
        MacAddr([0x02, 0x5c, b[0], b[1], b[2], b[3]])
    }

    /// Whether the multicast bit is set (then it cannot be a NIC's own address).
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

/// `VIRTIO_NET_S_LINK_UP` as the 16-bit `status` field holds it (virtio 1.2 section 5.1.4;
/// a test checks it against the `virtio_net.h` binding).
const STATUS_LINK_UP: u16 = 1;

/// Bytes of `struct virtio_net_config` the device fills: up to and including `mtu`.
pub const CONFIG_LEN: usize = 12;

/// `struct virtio_net_config` (virtio 1.2 section 5.1.4) up to `mtu`: mac[6] at 0, status
/// u16 at 6, max_virtqueue_pairs u16 at 8 (0: no VIRTIO_NET_F_MQ), mtu u16 at 10 (meaningful
/// with VIRTIO_NET_F_MTU; 0 without), little-endian.
pub fn config_bytes(mac: MacAddr, mtu: Option<u16>) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[..6].copy_from_slice(&mac.0);
    c[6..8].copy_from_slice(&STATUS_LINK_UP.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::config_space::read_config;

    #[test]
    fn mac_parse_and_print() {
        let m: MacAddr = "02:00:0a:0B:ff:01".parse().expect("mac");
        assert_eq!(m.0, [2, 0, 0x0a, 0x0b, 0xff, 1]);
        assert_eq!(m.to_string(), "02:00:0a:0b:ff:01");
        for bad in [
            "",
            "02:00:0a:0b:ff",
            "02:00:0a:0b:ff:01:02",
            "2:00:0a:0b:ff:01",
            "zz:00:0a:0b:ff:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!(!MacAddr::local(7).is_multicast());
    }

    #[test]
    fn link_up_is_the_virtio_net_h_value() {
        use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;
        assert_eq!(u32::from(STATUS_LINK_UP), VIRTIO_NET_S_LINK_UP);
        assert_eq!(
            config_bytes(MacAddr([2, 0, 0, 0, 0, 1]), None)[6..8],
            [1, 0]
        );
    }

    #[test]
    fn config_space_reads() {
        let c = config_bytes(MacAddr([1, 2, 3, 4, 5, 6]), Some(1500));
        let mut d = [0u8; 4];
        read_config(&c, 4, &mut d);
        assert_eq!(d, [5, 6, 1, 0], "mac tail then status LINK_UP");
        read_config(&c, 8, &mut d);
        // virtio_net_config's mtu is at offset 10 (after max_virtqueue_pairs at 8).
        assert_eq!(d, [0, 0, 0xdc, 0x05], "max_virtqueue_pairs 0, mtu 1500");
        read_config(&c, 11, &mut d);
        assert_eq!(d, [0x05, 0, 0, 0]);
        use virtio_bindings::virtio_net::virtio_net_config;
        assert_eq!(std::mem::offset_of!(virtio_net_config, mtu), 10);
        assert_eq!(std::mem::offset_of!(virtio_net_config, status), 6);
        read_config(&c, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config(&c, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }
}
