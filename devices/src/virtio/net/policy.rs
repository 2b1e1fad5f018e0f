//! The policy stage of the packet path: where the shaper and the audit plug in.

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
