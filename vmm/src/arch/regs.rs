//! General, segment and FPU registers of the boot vCPU for the PVH entry.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gdt::{self, CODE_SLOT, DATA_SLOT, PVH_GDT, TSS_SLOT};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, PVH_INFO_START};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
/// Reserved bit 1 of RFLAGS is always set.
const RFLAGS_RESERVED: u64 = 0x2;
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// Errors setting up boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// The boot GDT/IDT could not be written.
    #[error("writing the boot GDT/IDT to guest memory: {0}")]
    WriteTables(vm_memory::GuestMemoryError),
    /// A register ioctl failed.
    #[error("{what} on vCPU: {source}")]
    Ioctl {
        /// Which ioctl.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Ioctl { what, source }
}

/// Write the boot GDT and an empty IDT into guest memory.
pub fn write_boot_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    for (i, entry) in PVH_GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + (i as u64) * 8))
            .map_err(RegsError::WriteTables)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteTables)
}

/// Segment registers for 32-bit protected mode, paging off, as the PVH protocol requires.
pub fn pvh_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let code = gdt::segment(PVH_GDT[CODE_SLOT as usize], CODE_SLOT);
    let data = gdt::segment(PVH_GDT[DATA_SLOT as usize], DATA_SLOT);
    let tss = gdt::segment(PVH_GDT[TSS_SLOT as usize], TSS_SLOT);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&PVH_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    sregs
}

/// General registers at the PVH entry: EBX points at `hvm_start_info`.
pub fn pvh_regs(entry: GuestAddress) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rbx: PVH_INFO_START,
        rip: entry.0,
        ..Default::default()
    }
}

/// x87/SSE control state Linux expects at entry.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// Put the boot vCPU at the PVH entry point.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: GuestAddress) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&pvh_sregs(sregs))
        .map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&pvh_regs(entry))
        .map_err(ioctl("KVM_SET_REGS"))?;
    Ok(())
}

/// FPU state for every vCPU.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    vcpu.set_fpu(&boot_fpu()).map_err(ioctl("KVM_SET_FPU"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_state_is_protected_mode_without_paging() {
        let s = pvh_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & 0x8000_0001, 1, "PE on, PG off");
        assert_eq!(s.cs.selector, 0x8);
        assert_eq!(s.cs.db, 1, "32-bit code");
        assert_eq!(s.ss.selector, 0x10);
        assert_eq!(s.tr.type_, 0xb, "busy 32-bit TSS");
        let r = pvh_regs(GuestAddress(0x100_0000));
        assert_eq!((r.rip, r.rbx, r.rflags), (0x100_0000, PVH_INFO_START, 2));
    }

    #[test]
    fn boot_tables_land_in_memory() {
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("memory");
        write_boot_tables(&mem).expect("tables");
        let code: u64 = mem
            .read_obj(GuestAddress(BOOT_GDT_START + 8))
            .expect("read");
        assert_eq!(code, PVH_GDT[1]);
    }
}
