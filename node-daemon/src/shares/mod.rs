//! Node-wide, work-conserving bandwidth shares (see `docs/shaping.md`).
//!
//! The daemon runs the [`coordinator`]: every tick it reads each sliver's demand from the
//! shared-memory ledger ([`vmm::ledger`]), computes the allocation ([`alloc`], with the daily
//! [`budget`]) and writes each sliver's rate back. [`slots`] is the daemon's bookkeeping of
//! which sliver has which ledger slot. Each VMM's shaper stage reads its rate from its slot
//! ([`vmm::slot_rate`]) and reports bytes and backlog there.

pub mod alloc;
pub mod budget;
pub mod coordinator;
pub mod slots;
