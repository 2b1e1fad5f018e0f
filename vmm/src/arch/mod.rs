//! x86-64 specifics: guest physical layout, CPU state at boot, CPUID, MSRs, LAPIC, MP table.

pub mod cpuid;
pub mod cpuid_table;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
