//! vCPU threads: configure each vCPU, run it, and turn its exits into bus accesses or an
//! [`ExitReason`].

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestAddress;

use crate::arch::{cpuid, lapic, msr, regs};
use crate::bus::Bus;
use crate::exit::{ExitReason, ExitSignal};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// An ioctl failed.
    #[error("vCPU {id}: {what}: {source}")]
    Ioctl {
        /// vCPU index.
        id: u8,
        /// Which step.
        what: &'static str,
        /// Why.
        source: kvm_ioctls::Error,
    },
    /// Boot register setup failed.
    #[error("vCPU {0}: {1}")]
    Regs(u8, regs::RegsError),
    /// The thread could not be spawned.
    #[error("vCPU {0}: spawning its thread: {1}")]
    Spawn(u8, std::io::Error),
}

/// What every vCPU thread shares.
#[derive(Debug, Clone)]
pub struct VcpuContext {
    /// Port-I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Where exits are reported.
    pub exit: Arc<ExitSignal>,
}

/// Create vCPU `id` of `count` and give it CPUID, MSRs, FPU and LAPIC wiring; the boot vCPU
/// (with `entry`) also gets the PVH entry registers. The others wait for the guest's SIPI.
/// `pvm_host` applies the CPUID workaround for PVM-native hosts (see `cpuid::for_vcpu`).
pub fn create(
    vm: &VmFd,
    supported_cpuid: &CpuId,
    id: u8,
    count: u8,
    entry: Option<GuestAddress>,
    pvm_host: bool,
) -> Result<VcpuFd, VcpuError> {
    let err = |what| move |source| VcpuError::Ioctl { id, what, source };
    let vcpu = vm
        .create_vcpu(u64::from(id))
        .map_err(err("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(&cpuid::for_vcpu(supported_cpuid, id, count, pvm_host))
        .map_err(err("KVM_SET_CPUID2"))?;
    let msrs = msr::boot_msrs();
    let written = vcpu.set_msrs(&msrs).map_err(err("KVM_SET_MSRS"))?;
    if written != msrs.as_slice().len() {
        log::warn!(
            "vCPU {id}: KVM accepted {written} of {} boot MSRs",
            msrs.as_slice().len()
        );
    }
    regs::setup_fpu(&vcpu).map_err(|e| VcpuError::Regs(id, e))?;
    let mut lapic_state = vcpu.get_lapic().map_err(err("KVM_GET_LAPIC"))?;
    lapic::set_lint(&mut lapic_state);
    vcpu.set_lapic(&lapic_state).map_err(err("KVM_SET_LAPIC"))?;
    if let Some(entry) = entry {
        regs::setup_boot_vcpu(&vcpu, entry).map_err(|e| VcpuError::Regs(id, e))?;
    }
    Ok(vcpu)
}

/// Holds vCPU threads back until the rest of the VMM is ready (its seccomp filter in place),
/// and lets the VMM wait until each vCPU thread has its own descriptor table.
#[derive(Debug, Default)]
pub struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    open: bool,
    /// vCPU threads that have taken their descriptor tables.
    arrived: usize,
}

impl StartGate {
    fn state(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Let every waiting vCPU go.
    pub fn open(&self) {
        self.state().open = true;
        self.changed.notify_all();
    }

    /// Wait until `count` vCPU threads have taken their descriptor tables: a descriptor the
    /// VMM opens afterwards (a console client) is then in none of theirs.
    pub fn wait_arrived(&self, count: usize) {
        let mut state = self.state();
        while state.arrived < count {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn arrive(&self) {
        self.state().arrived += 1;
        self.changed.notify_all();
    }

    fn wait(&self) {
        let mut state = self.state();
        while !state.open {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Run vCPU `id` on its own thread until the VM stops: it takes a descriptor table of its
/// own ([`crate::fd_table`]), enters its seccomp filter, waits at `gate`, then runs the guest.
pub fn spawn(
    mut vcpu: VcpuFd,
    id: u8,
    ctx: VcpuContext,
    gate: Arc<StartGate>,
) -> Result<JoinHandle<()>, VcpuError> {
    std::thread::Builder::new()
        .name(format!("vcpu{id}"))
        .spawn(move || {
            crate::fd_table::unshare();
            gate.arrive();
            if let Err(e) = crate::seccomp::enter(crate::seccomp::ThreadKind::Vcpu) {
                ctx.exit.report(ExitReason::Vmm(format!("vCPU {id}: {e}")));
                return;
            }
            gate.wait();
            run_loop(&mut vcpu, id, &ctx)
        })
        .map_err(|e| VcpuError::Spawn(id, e))
}

fn run_loop(vcpu: &mut VcpuFd, id: u8, ctx: &VcpuContext) {
    while !ctx.exit.is_stopping() {
        let outcome = match vcpu.run() {
            Ok(exit) => handle_exit(exit, id, ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(ExitReason::Kvm {
                vcpu: id,
                detail: format!("KVM_RUN failed: {e}"),
            }),
        };
        if let Some(reason) = outcome {
            ctx.exit.report(reason);
        }
    }
    log::debug!("vCPU {id} stopped");
}

fn kvm_exit(id: u8, detail: String) -> Option<ExitReason> {
    Some(ExitReason::Kvm { vcpu: id, detail })
}

/// Handle one exit; `Some` ends the VM.
fn handle_exit(exit: VcpuExit<'_>, id: u8, ctx: &VcpuContext) -> Option<ExitReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(u64::from(port), data) {
                log::trace!("vCPU {id}: read of unmapped port {port:#x}");
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            if !ctx.pio.write(u64::from(port), data) {
                log::trace!("vCPU {id}: write to unmapped port {port:#x}");
            }
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                log::debug!("vCPU {id}: MMIO read of unmapped {addr:#x}");
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                log::debug!("vCPU {id}: MMIO write to unmapped {addr:#x}");
            }
            None
        }
        VcpuExit::Shutdown => Some(ExitReason::TripleFault { vcpu: id }),
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => Some(ExitReason::PowerOff),
            KVM_SYSTEM_EVENT_CRASH => kvm_exit(id, "guest crash event".into()),
            other => kvm_exit(id, format!("unknown system event {other}")),
        },
        VcpuExit::InternalError => kvm_exit(id, "KVM internal error (emulation failure)".into()),
        VcpuExit::FailEntry(reason, cpu) => kvm_exit(
            id,
            format!("VM entry failed (hardware reason {reason:#x}, host CPU {cpu})"),
        ),
        VcpuExit::Hlt => kvm_exit(id, "halted with no in-kernel irqchip".into()),
        other => kvm_exit(id, format!("unexpected exit {other:?}")),
    }
}
