//! Where things live in guest physical memory and on the buses. One place, so nothing overlaps.

/// Boot GDT (PVH entry runs with these segments loaded).
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT: one empty entry, so any early exception escalates to a triple fault.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (E820 entries).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Most memory-map entries we ever write.
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 8;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Linux/x86 COMMAND_LINE_SIZE, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: the MP table goes here, and RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of "high" memory, where Linux loads.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (devices, IOAPIC, LAPIC); RAM resumes at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// IOAPIC registers (as every PC has them).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// GSIs the IOAPIC provides.
pub const IOAPIC_PINS: u8 = 24;

/// COM1 ports and interrupt.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1 register count.
pub const COM1_PORT_COUNT: u64 = 8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port (the command port is +4).
pub const I8042_PORT: u16 = 0x60;
/// Boot-timer marker port (unused on a PC; QEMU's isa-debug-exit lives elsewhere).
pub const BOOT_TIMER_PORT: u16 = 0x440;

/// First virtio-mmio window (each device gets 4 KiB), inside the MMIO hole.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// First IRQ for virtio devices (COM1 has 4).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// virtio devices per VM (IRQs 5..=12).
pub const VIRTIO_MMIO_MAX_DEVICES: usize = 8;
