//! The policy stage of the packet path: where anti-spoofing and the audit plug in.

use std::time::Duration;

use super::shaper::Direction;

/// What the policy decided for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the frame on.
    Forward,
    /// Drop it (counted by the device).
    Drop,
}

/// Decides per frame, in both directions. `headers` is the start of the Ethernet frame
/// (without the virtio header): the whole frame, or its first [`HEADER_BYTES`] bytes if it is
/// longer; `frame_len` is the frame's full length. The header bytes are the VMM's own copy:
/// exactly what will be sent, whatever the guest does to its buffers meanwhile. Called on the
/// packet path: must not block or allocate.
pub trait PacketPolicy: Send {
    /// A frame the guest sends.
    fn on_tx(&mut self, headers: &[u8], frame_len: usize) -> Verdict;
    /// A frame for the guest.
    fn on_rx(&mut self, headers: &[u8], frame_len: usize) -> Verdict;

    /// A guest frame the frame checks dropped (too short or too long) before `on_tx`.
    fn on_tx_malformed(&mut self, _headers: &[u8], _frame_len: usize) {}

    /// The shaper made direction `dir` wait: the next frame that way was delayed.
    fn on_throttled(&mut self, _dir: Direction) {}

    /// How often [`PacketPolicy::tick`] should run (none: never).
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic housekeeping (e.g. ending idle flows), on the device's event loop.
    fn tick(&mut self) {}
}

/// How much of each frame a policy sees (enough for Ethernet + VLAN + IPv6 + TCP headers).
pub const HEADER_BYTES: usize = 128;

/// Forwards everything: the policy of a device with no limits.
#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardAll;

impl PacketPolicy for ForwardAll {
    fn on_tx(&mut self, _headers: &[u8], _frame_len: usize) -> Verdict {
        Verdict::Forward
    }

    fn on_rx(&mut self, _headers: &[u8], _frame_len: usize) -> Verdict {
        Verdict::Forward
    }
}
