//! The policy stage of the packet path: where the shaper and the audit plug in.

/// What the policy decided for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass the frame on.
    Forward,
    /// Drop it (counted by the device).
    Drop,
}

/// Decides per frame, in both directions. `frame` is the Ethernet frame without the virtio
/// header. Called on the packet path: must not block or allocate.
pub trait PacketPolicy: Send {
    /// A frame the guest sends.
    fn on_tx(&mut self, frame: &[u8]) -> Verdict;
    /// A frame for the guest.
    fn on_rx(&mut self, frame: &[u8]) -> Verdict;
}

/// Forwards everything: the policy of a device with no limits.
#[derive(Debug, Default, Clone, Copy)]
pub struct ForwardAll;

impl PacketPolicy for ForwardAll {
    fn on_tx(&mut self, _frame: &[u8]) -> Verdict {
        Verdict::Forward
    }

    fn on_rx(&mut self, _frame: &[u8]) -> Verdict {
        Verdict::Forward
    }
}
