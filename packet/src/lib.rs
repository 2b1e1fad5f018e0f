//! What the packet path says about a packet, in the words both its ends use: the device
//! models (the virtio-net pipeline decides) and the audit store (which records the decision).
//! One definition, so a verdict means the same thing on the packet path, on disk, in the API
//! and in the exports.

use serde::{Deserialize, Serialize};

/// Which way a packet goes, seen from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The guest sends (egress): from the guest to the network.
    Tx = 0,
    /// The guest receives (ingress): from the network to the guest.
    Rx = 1,
}

impl Direction {
    /// Both directions, in code order.
    pub const ALL: [Direction; 2] = [Direction::Tx, Direction::Rx];

    /// The index of this direction in per-direction arrays (0 TX, 1 RX); also its code on
    /// disk.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The on-disk code (0 TX, 1 RX).
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// From the on-disk code; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// `tx` or `rx`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Tx => "tx",
            Direction::Rx => "rx",
        }
    }
}

/// What the VMM did with a packet (and, in a flow record, with every packet of the flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Passed on.
    Forwarded,
    /// Passed on after waiting for the bandwidth shaper (delayed, not dropped; called
    /// `throttled` before, a name still accepted when reading JSON).
    #[serde(alias = "throttled")]
    Delayed,
    /// Dropped: the guest sent from an address that is not the sliver's.
    DroppedSpoof,
    /// Dropped: not a well-formed frame (too short or too long for the link, or headers that
    /// do not parse).
    DroppedMalformed,
    /// Dropped: a kind of frame a sliver may not send (VLAN-tagged, or an EtherType other than
    /// IPv4, ARP or IPv6).
    DroppedPolicy,
    /// Dropped: the host side (the TAP) refused the frame.
    DroppedBackend,
}

impl Verdict {
    /// Every verdict, in code order.
    pub const ALL: [Verdict; 6] = [
        Verdict::Forwarded,
        Verdict::Delayed,
        Verdict::DroppedSpoof,
        Verdict::DroppedMalformed,
        Verdict::DroppedPolicy,
        Verdict::DroppedBackend,
    ];

    /// The on-disk code (its index in [`Verdict::ALL`]).
    pub const fn code(self) -> u8 {
        match self {
            Verdict::Forwarded => 0,
            Verdict::Delayed => 1,
            Verdict::DroppedSpoof => 2,
            Verdict::DroppedMalformed => 3,
            Verdict::DroppedPolicy => 4,
            Verdict::DroppedBackend => 5,
        }
    }

    /// From the on-disk code; `None` for an unknown code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The name used in the CLI, JSON and exports.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Forwarded => "forwarded",
            Verdict::Delayed => "delayed",
            Verdict::DroppedSpoof => "dropped-spoof",
            Verdict::DroppedMalformed => "dropped-malformed",
            Verdict::DroppedPolicy => "dropped-policy",
            Verdict::DroppedBackend => "dropped-backend",
        }
    }

    /// Whether the packet went on (forwarded, possibly after a wait).
    pub const fn passes(self) -> bool {
        matches!(self, Verdict::Forwarded | Verdict::Delayed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for v in Verdict::ALL {
            assert_eq!(Verdict::from_code(v.code()), Some(v));
        }
        assert_eq!(Verdict::from_code(6), None);
        for d in Direction::ALL {
            assert_eq!(Direction::from_code(d.code()), Some(d));
            assert_eq!(Direction::ALL[d.index()], d);
        }
        assert_eq!(Direction::from_code(2), None);
    }

    #[test]
    fn json_names_are_the_cli_names() {
        for v in Verdict::ALL {
            let json = serde_json::to_value(v).expect("json");
            assert_eq!(json.as_str(), Some(v.as_str()));
        }
        for d in Direction::ALL {
            let json = serde_json::to_value(d).expect("json");
            assert_eq!(json.as_str(), Some(d.as_str()));
        }
    }

    #[test]
    fn only_forwarded_and_delayed_pass() {
        let passing: Vec<_> = Verdict::ALL.into_iter().filter(|v| v.passes()).collect();
        assert_eq!(passing, [Verdict::Forwarded, Verdict::Delayed]);
        let old: Verdict = serde_json::from_str("\"throttled\"").expect("old name");
        assert_eq!(old, Verdict::Delayed);
    }
}
