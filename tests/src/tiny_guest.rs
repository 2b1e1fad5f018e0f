//! Tiny guests: a few 32-bit protected-mode instructions wrapped in an ELF64 file with a PVH
//! entry note, so they boot through exactly the same loader path as a Linux vmlinux.
//!
//! Ring-0 guest code is emulated on the PVM test hosts (~1000x slower), so these guests are
//! kept to a handful of instructions.

use std::path::{Path, PathBuf};

/// Guest physical address the code is loaded at (and its entry point).
pub const LOAD_ADDR: u64 = 0x10_0000;
const CODE_OFFSET: usize = 0x1000;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const COM1: u16 = 0x3f8;
const BOOT_TIMER_PORT: u16 = 0x440;
const BOOT_TIMER_MAGIC: u8 = 123;

/// A straight-line program, built instruction by instruction.
#[derive(Debug, Default, Clone)]
pub struct Program {
    code: Vec<u8>,
}

impl Program {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    fn out_byte(mut self, port: u16, value: u8) -> Self {
        self.code.extend([0x66, 0xba]); // mov dx, imm16
        self.code.extend(port.to_le_bytes());
        self.code.extend([0xb0, value]); // mov al, imm8
        self.code.push(0xee); // out dx, al
        self
    }

    /// Tell the VMM the guest is running (boot-timer port).
    pub fn boot_marker(self) -> Self {
        self.out_byte(BOOT_TIMER_PORT, BOOT_TIMER_MAGIC)
    }

    /// Write `text` to COM1, one `out` per byte.
    pub fn print(self, text: &str) -> Self {
        text.bytes().fold(self, |p, b| p.out_byte(COM1, b))
    }

    /// Pulse the CPU reset line through the i8042 (Linux's `reboot=k`).
    pub fn reset(mut self) -> Self {
        self.code.extend([0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
        self
    }

    /// Execute an undefined instruction with no IDT: #UD, #DF, then a triple fault.
    pub fn triple_fault(mut self) -> Self {
        self.code.extend([0x0f, 0x0b]); // ud2
        self
    }

    /// Disable interrupts and halt forever.
    pub fn halt_forever(mut self) -> Self {
        self.code.extend([0xfa, 0xf4, 0xeb, 0xfd]); // cli; hlt; jmp back to hlt
        self
    }

    /// Spin forever (`jmp $`): the vCPU is always busy (guest ring-0 code: emulated, and so
    /// CPU time of the VMM's vCPU thread, on the PVM test hosts).
    pub fn spin_forever(mut self) -> Self {
        self.code.extend([0xeb, 0xfe]); // jmp to itself
        self
    }

    /// The machine code.
    pub fn code(&self) -> &[u8] {
        &self.code
    }

    /// The program as a PVH-bootable ELF64 image.
    pub fn elf(&self) -> Vec<u8> {
        elf_with_segment(&self.code, LOAD_ADDR)
    }

    /// Write the ELF image to `dir/name` and return its path.
    pub fn write_elf(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, self.elf()).expect("writing tiny guest ELF");
        path
    }
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

/// An ELF64 x86-64 executable with one PT_LOAD of `code` at physical `paddr` and a PT_NOTE
/// carrying the Xen PVH 32-bit entry (= `paddr`).
pub fn elf_with_segment(code: &[u8], paddr: u64) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let note_off = EHDR + 2 * PHDR;
    let mut note = Vec::new();
    note.extend(4u32.to_le_bytes()); // namesz
    note.extend(4u32.to_le_bytes()); // descsz
    note.extend(XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
    note.extend(b"Xen\0");
    note.extend((paddr as u32).to_le_bytes());

    let mut f = vec![0u8; CODE_OFFSET + code.len()];
    put(&mut f, 0, b"\x7fELF\x02\x01\x01"); // 64-bit, little endian, version 1
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &paddr.to_le_bytes()); // e_entry
    put(&mut f, 32, &(EHDR as u64).to_le_bytes()); // e_phoff
    put(&mut f, 52, &(EHDR as u16).to_le_bytes()); // e_ehsize
    put(&mut f, 54, &(PHDR as u16).to_le_bytes()); // e_phentsize
    put(&mut f, 56, &2u16.to_le_bytes()); // e_phnum

    let load = EHDR;
    put(&mut f, load, &1u32.to_le_bytes()); // PT_LOAD
    put(&mut f, load + 4, &5u32.to_le_bytes()); // R+X
    put(&mut f, load + 8, &(CODE_OFFSET as u64).to_le_bytes());
    put(&mut f, load + 16, &paddr.to_le_bytes()); // vaddr
    put(&mut f, load + 24, &paddr.to_le_bytes()); // paddr
    put(&mut f, load + 32, &(code.len() as u64).to_le_bytes()); // filesz
    put(&mut f, load + 40, &(code.len() as u64).to_le_bytes()); // memsz
    put(&mut f, load + 48, &0x1000u64.to_le_bytes());

    let pn = EHDR + PHDR;
    put(&mut f, pn, &4u32.to_le_bytes()); // PT_NOTE
    put(&mut f, pn + 8, &(note_off as u64).to_le_bytes());
    put(&mut f, pn + 32, &(note.len() as u64).to_le_bytes());
    put(&mut f, pn + 40, &(note.len() as u64).to_le_bytes());
    put(&mut f, pn + 48, &4u64.to_le_bytes());

    put(&mut f, note_off, &note);
    put(&mut f, CODE_OFFSET, code);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_encodes_port_writes() {
        let p = Program::new().print("A").reset();
        assert_eq!(
            p.code(),
            &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'A', 0xee, 0xb0, 0xfe, 0xe6, 0x64]
        );
    }

    #[test]
    fn elf_has_the_pvh_note_and_code() {
        let elf = Program::new().halt_forever().elf();
        assert_eq!(&elf[..4], b"\x7fELF");
        let note = 64 + 2 * 56;
        assert_eq!(
            u32::from_le_bytes(elf[note + 8..note + 12].try_into().expect("4")),
            18
        );
        assert_eq!(&elf[note + 12..note + 16], b"Xen\0");
        assert_eq!(&elf[CODE_OFFSET..], &[0xfa, 0xf4, 0xeb, 0xfd]);
    }
}
