//! The optional stages of one NIC's pipelines, as the TX and RX queues call them: the shaper
//! (shared by a sliver's NICs), anti-spoofing and the audit. The frame checks always run and
//! need no state. A stage that is off lets every frame through.

use std::sync::Arc;
use std::time::{Duration, Instant};

use packet::{Direction, Verdict};

use super::anti_spoofing::AntiSpoofing;
use super::audit::AuditStage;
use super::gso::WireSize;
use super::headers::FrameHeaders;
use super::shaper::{Admit, Allowance, Shaper};

/// The shaper's answer when a direction must wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Wait {
    /// Ask again after this long.
    pub(super) after: Duration,
    /// A frame is held back meanwhile (TX: always; RX: the TAP has one).
    pub(super) frame_waits: bool,
}

/// Which stages a NIC runs besides the frame checks.
#[derive(Debug, Default)]
pub struct Stages {
    /// Bandwidth shaper, shared by the sliver's NICs (none: no limits).
    pub shaper: Option<Arc<Shaper>>,
    /// Source-address checks on TX (none: any source passes).
    pub anti_spoofing: Option<AntiSpoofing>,
    /// Flow records and header capture, both directions (none: nothing is recorded).
    pub audit: Option<AuditStage>,
}

impl Stages {
    /// Whether a stage after the frame checks reads the frame's headers.
    #[inline]
    pub(super) fn reads_headers(&self) -> bool {
        self.anti_spoofing.is_some() || self.audit.is_some()
    }

    /// Shaper admission for the next frame going `dir`, spending the queue's `allowance`:
    /// `None` to go on, or how long to wait before asking again and whether a frame is held
    /// back meanwhile (`frame_waits()`, reported to the allocator as backlog). The clock is
    /// read only when the allowance needs tokens from the bucket.
    #[inline]
    pub(super) fn admit(
        &self,
        dir: Direction,
        allowance: &mut Allowance,
        frame_waits: impl FnOnce() -> bool,
    ) -> Option<Wait> {
        let shaper = self.shaper.as_ref()?;
        let mut now = None;
        let clock = || *now.insert(Instant::now());
        match shaper.admit(dir, allowance, clock) {
            Admit::Go => None,
            Admit::Wait(after) => {
                let frame_waits = frame_waits();
                if frame_waits {
                    shaper.waiting(dir, allowance, now.unwrap_or_else(Instant::now));
                }
                Some(Wait { after, frame_waits })
            }
        }
    }

    /// `bytes` of frames went `dir` (on the wire: a GSO frame's segments with their
    /// headers): the queue's `allowance` is charged for them.
    #[inline]
    pub(super) fn charge(&self, allowance: &mut Allowance, bytes: u64) {
        if self.shaper.is_some() {
            allowance.charge(bytes);
        }
    }

    /// The queue going `dir` ends its batch: its `allowance` goes back to the shaper.
    pub(super) fn settle(&self, dir: Direction, allowance: &mut Allowance) {
        if let Some(shaper) = &self.shaper {
            shaper.settle(dir, allowance);
        }
    }

    /// Nothing of the queue whose allowance is `allowance` waits to go `dir` any more.
    pub(super) fn idle(&self, dir: Direction, allowance: &mut Allowance) {
        if let Some(shaper) = &self.shaper {
            shaper.idle(dir, allowance);
        }
    }

    /// The queue whose allowance is `allowance` goes away (the device is reset): the
    /// allowance goes back to the shaper, and a frame of it that waited no longer counts.
    pub(super) fn release(&self, dir: Direction, allowance: &mut Allowance) {
        self.settle(dir, allowance);
        self.idle(dir, allowance);
    }

    /// Anti-spoofing on a guest frame whose headers are `parsed` (read by the frame checks
    /// whenever this stage is on; a frame without them does not pass).
    #[inline]
    pub(super) fn check_source(&self, parsed: Option<&FrameHeaders>) -> Result<(), Verdict> {
        match (&self.anti_spoofing, parsed) {
            (None, _) => Ok(()),
            (Some(stage), Some(headers)) => stage.check(headers),
            (Some(_), None) => Err(Verdict::DroppedMalformed),
        }
    }

    /// A queue starts processing a batch of frames (see [`AuditStage::begin_batch`]).
    pub(super) fn begin_batch(&mut self) {
        if let Some(audit) = &mut self.audit {
            audit.begin_batch();
        }
    }

    /// The batch is over.
    pub(super) fn end_batch(&mut self) {
        if let Some(audit) = &mut self.audit {
            audit.end_batch();
        }
    }

    /// The audit stage, if on: one packet going `dir` with `verdict`.
    #[inline]
    pub(super) fn audit(
        &mut self,
        dir: Direction,
        head: &[u8],
        size: WireSize,
        parsed: Option<&FrameHeaders>,
        verdict: Verdict,
    ) {
        if let Some(audit) = &mut self.audit {
            audit.record(dir, head, size, parsed, verdict);
        }
    }
}
