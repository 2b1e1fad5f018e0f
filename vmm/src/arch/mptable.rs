//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI finds its CPUs,
//! its IOAPIC and the ISA interrupt wiring.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_START, EBDA_START, IOAPIC_PINS, IOAPIC_START};

/// Most vCPUs whose entries still fit the 1 KiB EBDA.
pub const MAX_VCPUS: u8 = 32;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = (1 << 9) | 1; // on-chip APIC, FPU
const ENTRY_CPU: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
const ALL_APICS: u8 = 0xff;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for the table's space.
    #[error("--vcpus {0}: the MP table has room for at most {MAX_VCPUS}")]
    TooManyCpus(u8),
    /// Zero vCPUs.
    #[error("--vcpus 0: a VM needs at least one vCPU")]
    NoCpus,
    /// Guest memory write failed.
    #[error("writing the MP table at {EBDA_START:#x}: {0}")]
    Write(vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

fn lint(kind: u8, dest_apic: u8, lint_pin: u8) -> [u8; 8] {
    [ENTRY_LINT, kind, 0, 0, 0, 0, dest_apic, lint_pin]
}

/// The table's bytes for `vcpus` CPUs, placed at guest address `base`.
pub fn build(base: u64, vcpus: u8) -> Result<Vec<u8>, MptableError> {
    if vcpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if vcpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(vcpus));
    }
    let ioapic_id = vcpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend([ENTRY_CPU, id, APIC_VERSION, flags]);
        entries.extend(CPU_SIGNATURE.to_le_bytes());
        entries.extend(CPU_FEATURES.to_le_bytes());
        entries.extend([0u8; 8]);
        count += 1;
    }
    entries.extend([ENTRY_BUS, 0]);
    entries.extend(b"ISA   ");
    entries.extend([ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend((IOAPIC_START as u32).to_le_bytes());
    count += 2;
    for pin in 0..IOAPIC_PINS {
        entries.extend([ENTRY_IOINT, INT_VECTORED, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    entries.extend(lint(INT_EXTINT, 0, 0));
    entries.extend(lint(INT_NMI, ALL_APICS, 1));
    count += 2;

    let table_addr = base + FLOATING_LEN as u64;
    let table_len = (HEADER_LEN + entries.len()) as u16;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend(b"PCMP");
    header.extend(table_len.to_le_bytes());
    header.extend([SPEC_REV, 0]); // checksum patched below
    header.extend(b"SLICEVSR");
    header.extend(b"SLICEVISOR  ");
    header.extend(0u32.to_le_bytes()); // OEM table pointer
    header.extend(0u16.to_le_bytes()); // OEM table size
    header.extend(count.to_le_bytes());
    header.extend((APIC_START as u32).to_le_bytes());
    header.extend(0u32.to_le_bytes()); // extended table length, checksum, reserved
    let mut table = header;
    table.extend(entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend(b"_MP_");
    floating.extend((table_addr as u32).to_le_bytes());
    floating.extend([1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend(table);
    Ok(out)
}

/// Write the MP table for `vcpus` CPUs into the EBDA.
pub fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), MptableError> {
    let bytes = build(EBDA_START, vcpus)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        for n in [1u8, 2, 4, MAX_VCPUS] {
            let t = build(EBDA_START, n).expect("table");
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count, u16::from(n) + 2 + u16::from(IOAPIC_PINS) + 2);
            assert!(t.len() <= 1024, "{n} vCPUs must fit the EBDA");
            assert_eq!(
                table[HEADER_LEN + 3],
                CPU_ENABLED | CPU_BSP,
                "CPU 0 is the BSP"
            );
        }
    }

    #[test]
    fn cpu_count_limits() {
        assert!(matches!(build(0, 0), Err(MptableError::NoCpus)));
        assert!(matches!(
            build(0, MAX_VCPUS + 1),
            Err(MptableError::TooManyCpus(_))
        ));
    }
}
