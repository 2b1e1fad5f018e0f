//! Node-wide, work-conserving bandwidth shares (see `docs/shaping.md`).
//!
//! The node daemon runs the [`coordinator`]: every tick it reads each sliver's demand from the
//! shared-memory [`ledger`], computes the allocation ([`alloc`], with the daily [`budget`]) and
//! writes each sliver's rate back. Each VMM's shaper stage reads its rate from its slot
//! ([`slot_rate`]) on every frame and reports bytes and backlog there.

pub mod alloc;
pub mod budget;
pub mod coordinator;
pub mod ledger;
pub mod slot_rate;
pub mod slots;

pub use ledger::{Ledger, LedgerError};
pub use slot_rate::SlotRate;
