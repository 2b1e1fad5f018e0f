//! Segment descriptors for the boot GDT, and the `kvm_segment` each one loads as.

use kvm_bindings::kvm_segment;

/// One 8-byte descriptor from access flags (type, S, DPL, P in bits 0..8; AVL, L, D/B, G in
/// bits 12..16), base and 20-bit limit.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = flags as u64 & 0xf0ff;
    let base = base as u64;
    let limit = limit as u64;
    ((base & 0xff00_0000) << 32)
        | (flags << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

fn bits(entry: u64, shift: u32, width: u32) -> u8 {
    ((entry >> shift) & ((1 << width) - 1)) as u8
}

/// The hidden segment state a selector for GDT slot `index` would load.
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff);
    let raw_limit = ((entry >> 32) & 0x000f_0000) | (entry & 0xffff);
    let granular = bits(entry, 55, 1);
    let limit = if granular == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bits(entry, 47, 1);
    kvm_segment {
        base,
        limit: limit as u32,
        selector: index * 8,
        type_: bits(entry, 40, 4),
        present,
        dpl: bits(entry, 45, 2),
        db: bits(entry, 54, 1),
        s: bits(entry, 44, 1),
        l: bits(entry, 53, 1),
        g: granular,
        avl: bits(entry, 52, 1),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The boot GDT for the PVH entry: null, flat 32-bit code, flat data, a 32-bit TSS.
pub const PVH_GDT: [u64; 4] = [
    0,
    descriptor(0xc09b, 0, 0xfffff),
    descriptor(0xc093, 0, 0xfffff),
    descriptor(0x008b, 0, 0x67),
];
/// GDT slot of the code segment.
pub const CODE_SLOT: u16 = 1;
/// GDT slot of the data segment.
pub const DATA_SLOT: u16 = 2;
/// GDT slot of the TSS.
pub const TSS_SLOT: u16 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_segment_decodes() {
        let seg = segment(PVH_GDT[CODE_SLOT as usize], CODE_SLOT);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.selector, 0x8);
        assert_eq!(seg.type_, 0xb);
        assert_eq!(
            (seg.present, seg.s, seg.db, seg.g, seg.l, seg.dpl),
            (1, 1, 1, 1, 0, 0)
        );
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn descriptor_roundtrips_base_and_limit() {
        let entry = descriptor(0x0093, 0x1234_5678, 0xabcde);
        let seg = segment(entry, 5);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
        assert_eq!(seg.g, 0);
        assert_eq!(seg.selector, 40);
    }

    #[test]
    fn null_descriptor_is_unusable() {
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
