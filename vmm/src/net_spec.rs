//! `--net tap=NAME[,mac=MAC][,ip=A.B.C.D][,fd=N][,offloads=on|off]`: one virtio-net device
//! on a host TAP; `ip` is the guest's own IPv4 address, the only one it may send from
//! (anti-spoofing); `fd` is a /dev/net/tun descriptor already attached to the TAP, inherited
//! from a supervisor that has the privilege the VMM lacks; `offloads=off` offers the guest no
//! checksum or segmentation offload (on by default, see `devices::virtio::net::features`).

use std::str::FromStr;

use devices::virtio::net::MacAddr;

/// One network device as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    /// Host TAP device name.
    pub tap: String,
    /// Guest MAC; derived from the TAP name when not given.
    pub mac: Option<MacAddr>,
    /// The guest's IPv4 address (then frames from other IPv4 sources are dropped).
    pub ip: Option<std::net::Ipv4Addr>,
    /// IPv4 networks the guest may not send to (`slicevisor run --deny-dst`, for every NIC).
    pub deny_dst: Vec<ipnet::Ipv4Net>,
    /// An inherited /dev/net/tun descriptor attached to `tap` (else the VMM opens the TAP).
    pub fd: Option<i32>,
    /// Offer checksum and TSO offloads (when the TAP carries them).
    pub offloads: bool,
}

/// A `--net` value that does not parse; the message names the offending part.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetSpecError {
    /// `tap=` missing.
    #[error("--net {0:?}: tap=NAME is required")]
    NoTap(String),
    /// An unknown key.
    #[error(
        "--net {spec:?}: unknown key {key:?} (expected tap=NAME[,mac=MAC][,ip=A.B.C.D][,fd=N][,offloads=on|off])"
    )]
    UnknownKey {
        /// Whole value.
        spec: String,
        /// The key.
        key: String,
    },
    /// A key given twice.
    #[error("--net {spec:?}: {key} given twice")]
    Duplicate {
        /// Whole value.
        spec: String,
        /// The key.
        key: String,
    },
    /// Bad IPv4 address.
    #[error("--net {spec:?}: ip={value:?} is not an IPv4 address")]
    Ip {
        /// Whole value.
        spec: String,
        /// The value.
        value: String,
    },
    /// Bad descriptor number.
    #[error("--net {spec:?}: fd={value:?} is not an inherited descriptor number (3 or more)")]
    Fd {
        /// Whole value.
        spec: String,
        /// The value.
        value: String,
    },
    /// `offloads=` neither on nor off.
    #[error("--net {spec:?}: offloads={value:?} is neither on nor off")]
    Offloads {
        /// Whole value.
        spec: String,
        /// The value.
        value: String,
    },
    /// Bad MAC.
    #[error("--net {spec:?}: {reason}")]
    Mac {
        /// Whole value.
        spec: String,
        /// Why.
        reason: String,
    },
}

impl FromStr for NetSpec {
    type Err = NetSpecError;

    fn from_str(spec: &str) -> Result<Self, NetSpecError> {
        let mut tap = None;
        let mut mac = None;
        let mut ip = None;
        let mut fd = None;
        let mut offloads = None;
        for part in spec.split(',') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            let dup = |k: &str| NetSpecError::Duplicate {
                spec: spec.into(),
                key: k.into(),
            };
            match key {
                "tap" => {
                    if tap.replace(value.to_string()).is_some() {
                        return Err(dup("tap"));
                    }
                }
                "mac" => {
                    let parsed: MacAddr =
                        value
                            .parse()
                            .map_err(|e: devices::virtio::net::config::BadMac| {
                                NetSpecError::Mac {
                                    spec: spec.into(),
                                    reason: e.to_string(),
                                }
                            })?;
                    if parsed.is_multicast() {
                        return Err(NetSpecError::Mac {
                            spec: spec.into(),
                            reason: format!(
                                "mac={value}: a multicast address cannot be a NIC's own"
                            ),
                        });
                    }
                    if mac.replace(parsed).is_some() {
                        return Err(dup("mac"));
                    }
                }
                "fd" => {
                    let parsed =
                        value
                            .parse::<i32>()
                            .ok()
                            .filter(|&n| n >= 3)
                            .ok_or_else(|| NetSpecError::Fd {
                                spec: spec.into(),
                                value: value.into(),
                            })?;
                    if fd.replace(parsed).is_some() {
                        return Err(dup("fd"));
                    }
                }
                "offloads" => {
                    let on = match value {
                        "on" => true,
                        "off" => false,
                        _ => {
                            return Err(NetSpecError::Offloads {
                                spec: spec.into(),
                                value: value.into(),
                            })
                        }
                    };
                    if offloads.replace(on).is_some() {
                        return Err(dup("offloads"));
                    }
                }
                "ip" => {
                    let parsed = value.parse().map_err(|_| NetSpecError::Ip {
                        spec: spec.into(),
                        value: value.into(),
                    })?;
                    if ip.replace(parsed).is_some() {
                        return Err(dup("ip"));
                    }
                }
                _ => {
                    return Err(NetSpecError::UnknownKey {
                        spec: spec.into(),
                        key: key.into(),
                    })
                }
            }
        }
        let tap = tap.ok_or_else(|| NetSpecError::NoTap(spec.into()))?;
        Ok(NetSpec {
            tap,
            mac,
            ip,
            deny_dst: Vec::new(),
            fd,
            offloads: offloads.unwrap_or(true),
        })
    }
}

impl NetSpec {
    /// The MAC to use: the given one, or a locally administered one derived from the TAP name
    /// (stable across runs, distinct for distinct TAPs).
    pub fn mac_or_derived(&self) -> MacAddr {
        self.mac.unwrap_or_else(|| {
            // FNV-1a over the name.
            let hash = self.tap.bytes().fold(0x811c_9dc5u32, |h, b| {
                (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
            });
            MacAddr::local(hash)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tap_and_mac() {
        let s: NetSpec = "tap=slv0,mac=02:00:00:00:00:07".parse().expect("spec");
        assert_eq!(s.tap, "slv0");
        assert_eq!(s.mac_or_derived().to_string(), "02:00:00:00:00:07");
        let s: NetSpec = "tap=slv1".parse().expect("spec");
        assert_eq!(s.mac, None);
        assert_eq!(s.mac_or_derived(), s.mac_or_derived());
        let other: NetSpec = "tap=slv2".parse().expect("spec");
        assert_ne!(s.mac_or_derived(), other.mac_or_derived());
        assert!(!s.mac_or_derived().is_multicast());
    }

    #[test]
    fn errors_name_the_part() {
        assert!(matches!(
            "mac=02:00:00:00:00:01".parse::<NetSpec>(),
            Err(NetSpecError::NoTap(_))
        ));
        let e = "tap=a,speed=10".parse::<NetSpec>().expect_err("unknown");
        assert!(e.to_string().contains("\"speed\""), "{e}");
        let e = "tap=a,tap=b".parse::<NetSpec>().expect_err("dup");
        assert!(e.to_string().contains("tap given twice"), "{e}");
        let s: NetSpec = "tap=a,ip=10.0.0.2".parse().expect("ip");
        assert_eq!(s.ip, Some(std::net::Ipv4Addr::new(10, 0, 0, 2)));
        let e = "tap=a,ip=10.0.0".parse::<NetSpec>().expect_err("ip");
        assert!(e.to_string().contains("ip=\"10.0.0\""), "{e}");
        let e = "tap=a,mac=zz".parse::<NetSpec>().expect_err("mac");
        assert!(e.to_string().contains("mac=\"zz\""), "{e}");
        let e = "tap=a,mac=01:00:5e:00:00:01"
            .parse::<NetSpec>()
            .expect_err("multicast");
        assert!(e.to_string().contains("multicast"), "{e}");
        let s: NetSpec = "tap=a,offloads=off".parse().expect("offloads");
        assert!(!s.offloads);
        assert!("tap=a".parse::<NetSpec>().expect("default").offloads);
        let e = "tap=a,offloads=yes".parse::<NetSpec>().expect_err("yes");
        assert!(e.to_string().contains("offloads=\"yes\""), "{e}");
        let e = "tap=a,offloads=on,offloads=off"
            .parse::<NetSpec>()
            .expect_err("twice");
        assert!(e.to_string().contains("offloads given twice"), "{e}");
        let s: NetSpec = "tap=a,fd=3".parse().expect("fd");
        assert_eq!(s.fd, Some(3));
        for bad in ["tap=a,fd=2", "tap=a,fd=-1", "tap=a,fd=x"] {
            let e = bad.parse::<NetSpec>().expect_err(bad);
            assert!(e.to_string().contains("fd="), "{e}");
        }
    }
}
