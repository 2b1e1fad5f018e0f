//! The PVH start-of-day structures: `hvm_start_info`, the memory map and the module list.

use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::loader::LoadedInitrd;
use crate::arch::layout::{
    CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START, PVH_MODLIST_START,
};
use crate::memory::MapEntry;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// Errors writing the PVH structures.
#[derive(Debug, thiserror::Error)]
pub enum PvhError {
    /// Too many memory-map entries.
    #[error("PVH memory map has {0} entries; at most {PVH_MEMMAP_MAX_ENTRIES} fit")]
    TooManyEntries(usize),
    /// linux-loader failed.
    #[error("writing PVH boot parameters: {0}")]
    Configure(linux_loader::configurator::Error),
}

/// Write `hvm_start_info` (at [`PVH_INFO_START`]), the RAM map and the initrd module.
pub fn write_start_info(
    mem: &GuestMemoryMmap,
    ram: &[MapEntry],
    initrd: Option<LoadedInitrd>,
) -> Result<(), PvhError> {
    if ram.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(PvhError::TooManyEntries(ram.len()));
    }
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: ram.len() as u32,
        ..Default::default()
    };
    if initrd.is_some() {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    for (i, entry) in ram.iter().enumerate() {
        let e = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: E820_RAM,
            reserved: 0,
        };
        let at = (i == 0).then_some(GuestAddress(PVH_MEMMAP_START));
        params.add_section(&e, at).map_err(PvhError::Configure)?;
    }
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        };
        params
            .add_module(&module, Some(GuestAddress(PVH_MODLIST_START)))
            .map_err(PvhError::Configure)?;
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(PvhError::Configure)
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;
    use crate::memory::usable_ram;

    #[test]
    fn start_info_points_at_map_cmdline_and_initrd() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("memory");
        let initrd = LoadedInitrd {
            addr: GuestAddress(0xf0_0000),
            size: 1234,
        };
        write_start_info(&mem, &usable_ram(16), Some(initrd)).expect("write");
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).expect("read");
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let second: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(PVH_MEMMAP_START + 24))
            .expect("read");
        assert_eq!(
            (second.addr, second.size),
            (0x10_0000, (16 << 20) - 0x10_0000)
        );
        let module: hvm_modlist_entry =
            mem.read_obj(GuestAddress(PVH_MODLIST_START)).expect("read");
        assert_eq!((module.paddr, module.size), (0xf0_0000, 1234));
    }
}
