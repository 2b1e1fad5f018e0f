//! The CPUID a vCPU reports: what KVM supports, with topology and the hypervisor bit filled in.
//!
//! Note: on PVM-native test hosts `KVM_SET_CPUID2` is accepted but ignored (see
//! `host_quirks`); this module still does what real hardware needs.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_TOPOLOGY: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
/// V2 extended topology (Intel SDM vol. 2A, CPUID leaf 1FH): EDX is the x2APIC id, as in 0xB.
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// KVM_FEATURE_PV_SEND_IPI (leaf 0x4000_0001 EAX bit 11).
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const HYPERVISOR_BIT: u32 = 1 << 31; // leaf 1 ECX
const HTT_BIT: u32 = 1 << 28; // leaf 1 EDX
const CLFLUSH_LINE_QWORDS: u32 = 8; // 64-byte lines

fn set_field(reg: &mut u32, shift: u32, width: u32, value: u32) {
    let mask = ((1u64 << width) - 1) as u32;
    *reg = (*reg & !(mask << shift)) | ((value & mask) << shift);
}

/// Adjust one entry for vCPU `id` of `count`.
fn normalize_entry(entry: &mut kvm_cpuid_entry2, id: u8, count: u8) {
    match entry.function {
        LEAF_FEATURES => {
            set_field(&mut entry.ebx, 24, 8, u32::from(id));
            set_field(&mut entry.ebx, 16, 8, u32::from(count));
            set_field(&mut entry.ebx, 8, 8, CLFLUSH_LINE_QWORDS);
            entry.ecx |= HYPERVISOR_BIT;
            if count > 1 {
                entry.edx |= HTT_BIT;
            } else {
                entry.edx &= !HTT_BIT;
            }
        }
        LEAF_CACHE_TOPOLOGY => {
            // Cores per package - 1; every vCPU is a core of one package.
            set_field(&mut entry.eax, 26, 6, u32::from(count.saturating_sub(1)));
        }
        // KVM answers with the x2APIC id of the host CPU that asked.
        LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
            entry.edx = u32::from(id);
        }
        _ => {}
    }
}

/// CPUID for vCPU `id` of `count`, from the hypervisor's supported set. With `pvm_host`,
/// also hide KVM's paravirtual send-IPI: on PVM-native hosts a Linux guest that uses it never
/// brings its secondary CPUs up (KVM's own leaves are honoured there, unlike the hardware
/// ones).
pub fn for_vcpu(supported: &CpuId, id: u8, count: u8, pvm_host: bool) -> CpuId {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        normalize_entry(entry, id, count);
        if pvm_host && entry.function == LEAF_KVM_FEATURES {
            entry.eax &= !KVM_FEATURE_PV_SEND_IPI;
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ebx: 0xffff_ffff,
            eax: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn topology_and_hypervisor_bit() {
        let supported =
            CpuId::from_entries(&[entry(1), entry(4), entry(0xb), entry(7), entry(0x1f)])
                .expect("cpuid");
        let c = for_vcpu(&supported, 2, 4, false);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 2, "APIC id");
        assert_eq!((e[0].ebx >> 16) & 0xff, 4, "logical count");
        assert_eq!((e[0].ebx >> 8) & 0xff, 8, "clflush");
        assert_ne!(e[0].ecx & HYPERVISOR_BIT, 0);
        assert_ne!(e[0].edx & HTT_BIT, 0);
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!(e[2].edx, 2);
        assert_eq!(e[3].ebx, 0xffff_ffff, "other leaves untouched");
        assert_eq!(e[4].edx, 2, "leaf 0x1F's x2APIC id");
    }

    #[test]
    fn pv_send_ipi_hidden_only_on_pvm_hosts() {
        let kvm = kvm_cpuid_entry2 {
            function: LEAF_KVM_FEATURES,
            eax: 0xffff_ffff,
            ..Default::default()
        };
        let supported = CpuId::from_entries(&[kvm]).expect("cpuid");
        assert_eq!(
            for_vcpu(&supported, 0, 2, false).as_slice()[0].eax,
            0xffff_ffff
        );
        assert_eq!(
            for_vcpu(&supported, 0, 2, true).as_slice()[0].eax,
            !KVM_FEATURE_PV_SEND_IPI
        );
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut one = entry(1);
        one.edx = HTT_BIT;
        let c = for_vcpu(&CpuId::from_entries(&[one]).expect("cpuid"), 0, 1, false);
        assert_eq!(c.as_slice()[0].edx & HTT_BIT, 0);
    }
}
