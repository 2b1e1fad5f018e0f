//! Opening KVM and creating the VM: memory slots, in-kernel irqchip and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// Where KVM may put the three-page TSS it needs on Intel (just below the BIOS area).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors opening KVM or creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm is missing.
    #[error("/dev/kvm does not exist: this machine has no KVM (load kvm_intel/kvm_amd, or run on a host with virtualisation)")]
    NoKvm,
    /// No permission on /dev/kvm.
    #[error("/dev/kvm: permission denied (run as root or as a member of the kvm group)")]
    NoPermission,
    /// Some other failure opening /dev/kvm.
    #[error("opening /dev/kvm: {0}")]
    Open(kvm_ioctls::Error),
    /// Wrong API version.
    #[error("KVM API version {0}, expected 12")]
    ApiVersion(i32),
    /// More vCPUs than KVM allows.
    #[error("--vcpus {requested}: KVM on this host allows at most {max}")]
    TooManyVcpus {
        /// Requested.
        requested: u8,
        /// KVM's maximum (KVM_CAP_MAX_VCPUS).
        max: usize,
    },
    /// A VM ioctl failed.
    #[error("{what}: {source}")]
    Ioctl {
        /// Which step.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
}

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
    move |source| KvmError::Ioctl { what, source }
}

/// Open /dev/kvm (or use `fd`, opened before a jail) and check it is usable for `vcpus`
/// vCPUs.
pub fn open(vcpus: u8, fd: Option<std::os::fd::OwnedFd>) -> Result<Kvm, KvmError> {
    let kvm = match fd {
        // SAFETY: `fd` is an open /dev/kvm descriptor whose ownership moves into `Kvm`.
        Some(fd) => unsafe {
            <Kvm as std::os::fd::FromRawFd>::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(fd))
        },
        None => Kvm::new().map_err(|e| match e.errno() {
            libc::ENOENT | libc::ENODEV | libc::ENXIO => KvmError::NoKvm,
            libc::EACCES | libc::EPERM => KvmError::NoPermission,
            _ => KvmError::Open(e),
        })?,
    };
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(KvmError::ApiVersion(version));
    }
    let max = kvm.get_max_vcpus();
    if usize::from(vcpus) > max {
        return Err(KvmError::TooManyVcpus {
            requested: vcpus,
            max,
        });
    }
    let recommended = kvm.get_nr_vcpus();
    if usize::from(vcpus) > recommended {
        log::warn!(
            "{vcpus} vCPUs is more than KVM recommends here ({recommended}, the host's CPU count)"
        );
    }
    Ok(kvm)
}

/// Create the VM with its memory slots, irqchip (PIC + IOAPIC + LAPICs) and PIT.
pub fn create_vm(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<VmFd, KvmError> {
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|_| KvmError::Ioctl {
                what: "guest memory region has no host mapping",
                source: kvm_ioctls::Error::new(libc::EFAULT),
            })?;
        let slot_region = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of exactly `memory_size` bytes owned by `mem`,
        // which the VM builder keeps alive for as long as the VM (and its vCPUs) exist.
        unsafe { vm.set_user_memory_region(slot_region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(ioctl("KVM_CREATE_PIT2"))?;
    Ok(vm)
}
