//! Building and running one micro-VM: memory, kernel, devices, vCPUs, event loop, teardown.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::legacy::{i8042, BootTimer, ConsoleWriter, SerialDevice, I8042};
use devices::virtio::net::Shaper;
use devices::{EventFdInterrupt, GuestEvent, GuestEventSink};
use kvm_ioctls::VmFd;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::arch::layout::{
    BOOT_TIMER_PORT, CMDLINE_START, COM1_IRQ, COM1_PORT, COM1_PORT_COUNT, I8042_PORT,
};
use crate::arch::{cpuid_table, mptable, regs};
use crate::attach::VirtioAttacher;
use crate::audit_sink::SliverAudit;
use crate::boot::{cmdline, loader, pvh};
use crate::bus::{Bus, BusError};
use crate::console::{ConsoleOut, ConsoleSocket};
use crate::disk_spec::DiskSpec;
use crate::drives::{self, DriveError};
use crate::event_loop::{EventLoop, EventLoopError};
use crate::exit::{ExitReason, ExitSignal};
use crate::host_quirks::{self, QuirkMode};
use crate::jail::Preopened;
use crate::memory::{self, MemoryError};
use crate::net_spec::NetSpec;
use crate::nic::{self, AttachedNet, NicAudit, NicError};
use crate::stats::StatsWriter;
use crate::vcpu::{self, VcpuContext, VcpuError};
use crate::{boot_report, kvm_vm};

/// How often a vCPU that has not stopped yet is kicked out of KVM_RUN again.
const KICK_INTERVAL: Duration = Duration::from_millis(2);

/// What to boot, and with what.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// ELF vmlinux with a PVH entry.
    pub kernel: PathBuf,
    /// Initramfs (cpio) passed as the PVH module.
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments after the VMM's base ones.
    pub cmdline: Option<String>,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// Whether to apply the PVM-host command-line workarounds.
    pub host_quirks: QuirkMode,
    /// Disks, in order (the first is /dev/vda).
    pub disks: Vec<DiskSpec>,
    /// Network devices.
    pub net: Vec<NetSpec>,
    /// Where to write the packet counters every second and at exit.
    pub stats_file: Option<PathBuf>,
    /// The node's shaper ledger and this sliver's slot in it.
    pub shaper: Option<(PathBuf, usize)>,
    /// Where and how the NICs' audit stage keeps its records.
    pub audit: Option<AuditSetup>,
    /// The console's output to this bounded log instead of stdout.
    pub console_log: Option<PathBuf>,
    /// A unix socket where console clients watch and one types.
    pub console_socket: Option<PathBuf>,
    /// KVM's supported CPUID table in this file (see [`cpuid_table`]) instead of asking KVM.
    pub supported_cpuid: Option<PathBuf>,
}

/// The audit outputs of this VMM's sliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSetup {
    /// The sliver's audit directory (log segments and capture ring).
    pub dir: PathBuf,
    /// Who the records are about.
    pub identity: crate::audit_sink::Identity,
    /// Header capture settings.
    pub capture: audit_store::capture::CaptureConfig,
}

/// Errors building the VM; each message names what failed.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Bad vCPU count.
    #[error(transparent)]
    Vcpus(mptable::MptableError),
    /// Bad or unallocatable memory size.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Bad command line.
    #[error(transparent)]
    Cmdline(#[from] cmdline::CmdlineError),
    /// KVM unusable.
    #[error(transparent)]
    Kvm(#[from] kvm_vm::KvmError),
    /// Kernel or initrd could not be loaded.
    #[error(transparent)]
    Loader(#[from] loader::LoaderError),
    /// PVH structures.
    #[error(transparent)]
    Pvh(#[from] pvh::PvhError),
    /// Command line could not be written.
    #[error("writing the kernel command line into guest memory: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    /// Boot tables.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// Device wiring.
    #[error("wiring devices: {0}")]
    Bus(#[from] BusError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The `--supported-cpuid` table could not be read.
    #[error("--supported-cpuid {0}")]
    SupportedCpuid(#[source] cpuid_table::CpuidTableError),
    /// Event loop setup.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// A network device could not be set up.
    #[error(transparent)]
    Nic(#[from] NicError),
    /// A disk could not be set up.
    #[error(transparent)]
    Drive(#[from] DriveError),
    /// A system resource (eventfd, irqfd, CPUID query) failed.
    #[error("{0}: {1}")]
    Resource(&'static str, std::io::Error),
    /// The shaper ledger named by --shaper-ledger/--shaper-slot.
    #[error("--shaper-ledger: {0}")]
    Shaper(#[from] crate::ledger::LedgerError),
    /// The audit log or capture ring named by --audit-dir.
    #[error("--audit-dir: {0}")]
    Audit(#[from] audit_store::AuditError),
    /// The console log or socket.
    #[error("{0}: {1}")]
    Console(&'static str, std::io::Error),
    /// The jail could not be entered.
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    /// The seccomp filters could not be prepared or installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// The shaper stage of this sliver's NICs, fed by slot `slot` of the ledger at `path` (or
/// through `file`, opened before the jail).
fn open_shaper(
    path: &std::path::Path,
    file: Option<std::fs::File>,
    slot: usize,
) -> Result<Arc<Shaper>, VmError> {
    let ledger = Arc::new(match file {
        Some(file) => crate::ledger::Ledger::open_file(path, file)?,
        None => crate::ledger::Ledger::open(path)?,
    });
    let source = crate::slot_rate::SlotRate::new(ledger, slot)?;
    log::info!("shaping with slot {slot} of {}", path.display());
    Ok(Arc::new(Shaper::new(Box::new(source))))
}

/// COM1, its output going to the console's outbox (and stdout without a console log).
type Console = Arc<Mutex<SerialDevice<ConsoleOut>>>;

/// Turns device reports into exit reasons and boot measurements.
struct VmEvents {
    exit: Arc<ExitSignal>,
    start: Instant,
    guest_ranges: Vec<(usize, usize)>,
}

impl GuestEventSink for VmEvents {
    fn notify(&self, event: GuestEvent) {
        match event {
            GuestEvent::Reset => self.exit.report(ExitReason::PowerOff),
            GuestEvent::Panic(line) => self.exit.report(ExitReason::GuestPanic(line)),
            GuestEvent::BootMarker => {
                let r = boot_report::boot_report(self.start, &self.guest_ranges);
                log::info!(
                    "boot-timer: guest running after {:.2} ms wall, {:.2} ms CPU; RSS {} KiB = guest memory {} KiB + VMM overhead {} KiB (private {} KiB)",
                    r.wall_ms,
                    r.cpu_ms,
                    r.rss_kib,
                    r.guest_resident_kib,
                    r.overhead_kib(),
                    r.private_overhead_kib()
                );
            }
        }
    }
}

fn host_ranges(mem: &GuestMemoryMmap) -> Vec<(usize, usize)> {
    mem.iter()
        .filter_map(|r| {
            let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
            Some((host as usize, r.len() as usize))
        })
        .collect()
}

fn validate_vcpus(vcpus: u8) -> Result<(), VmError> {
    if vcpus == 0 {
        return Err(VmError::Vcpus(mptable::MptableError::NoCpus));
    }
    if vcpus > mptable::MAX_VCPUS {
        return Err(VmError::Vcpus(mptable::MptableError::TooManyCpus(vcpus)));
    }
    Ok(())
}

/// The legacy devices on the port-I/O bus, COM1's output going to `out`; returns the bus and
/// COM1 (for console input).
fn legacy_devices(
    vm: &VmFd,
    sink: Arc<dyn GuestEventSink>,
    out: ConsoleOut,
) -> Result<(Bus, Console), VmError> {
    let irq = EventFdInterrupt::new().map_err(|e| VmError::Resource("COM1 eventfd", e))?;
    vm.register_irqfd(irq.eventfd(), COM1_IRQ)
        .map_err(|e| VmError::Resource("COM1 irqfd", e.into()))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        Arc::new(irq),
        ConsoleWriter::new(out, sink.clone()),
    )));
    let mut pio = Bus::new();
    pio.insert(u64::from(COM1_PORT), COM1_PORT_COUNT, serial.clone())?;
    pio.insert(
        u64::from(I8042_PORT),
        i8042::PORT_COUNT,
        Arc::new(Mutex::new(I8042::new(sink.clone()))),
    )?;
    pio.insert(
        u64::from(BOOT_TIMER_PORT),
        1,
        Arc::new(Mutex::new(BootTimer::new(sink))),
    )?;
    Ok((pio, serial))
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

fn install_kick_handler() -> Result<(), VmError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = register_signal_handler(SIGRTMIN(), kick_handler)
            .map_err(|e| VmError::Resource("vCPU kick signal handler", e.into()));
    });
    result
}

/// Kick every vCPU thread out of KVM_RUN until it notices the stop, then join it.
fn stop_vcpus(handles: Vec<JoinHandle<()>>) {
    for handle in handles {
        while !handle.is_finished() {
            if let Err(e) = handle.kill(SIGRTMIN()) {
                log::debug!("kicking a vCPU: {e}");
            }
            std::thread::sleep(KICK_INTERVAL);
        }
        if handle.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

fn log_net_counters(nets: &[AttachedNet]) {
    for (i, net) in nets.iter().enumerate() {
        let c = net.counters.snapshot();
        log::info!(
            "net{i} (tap {}): tx {} packets {} bytes, {} dropped; rx {} packets {} bytes, {} dropped; {} malformed chains, {} waits for RX buffers",
            net.tap, c.tx_packets, c.tx_bytes, c.tx_dropped, c.rx_packets, c.rx_bytes,
            c.rx_dropped, c.malformed_chains, c.rx_no_buffer
        );
    }
}

/// Build the VM from `config` (with what `pre` holds opened already), run it until it ends,
/// tear it down, and say why it ended. Each thread enters its seccomp filter (if
/// [`crate::seccomp::prepare`] made any) before the guest's first instruction.
pub fn run(config: &VmConfig, pre: Preopened) -> Result<ExitReason, VmError> {
    let Preopened {
        kvm: kvm_fd,
        ledger,
        mut taps,
        supported_cpuid,
    } = pre;
    let start = Instant::now();
    // Stop signals are handled from here on (a stop during set-up ends the VM once it runs).
    let exit = Arc::new(ExitSignal::new().map_err(|e| VmError::Resource("exit eventfd", e))?);
    let mut event_loop = EventLoop::new(exit.clone())?;
    validate_vcpus(config.vcpus)?;
    let (extra, why) =
        host_quirks::cmdline_workarounds(config.host_quirks, host_quirks::pvm_native_host());
    let pvm_host = !extra.is_empty();
    if pvm_host {
        log::info!(
            "host quirks: {why}; adding to the kernel command line: {}; hiding KVM PV send-IPI from the guest",
            extra.join(" ")
        );
    } else {
        log::info!("host quirks: {why}");
    }
    // Check the user's command line before anything is allocated.
    cmdline::build(config.cmdline.as_deref(), &extra)?;
    let mem = memory::create(config.mem_mib)?;
    let kvm = kvm_vm::open(config.vcpus, kvm_fd)?;
    let vm = kvm_vm::create_vm(&kvm, &mem)?;

    let sink: Arc<dyn GuestEventSink> = Arc::new(VmEvents {
        exit: exit.clone(),
        start,
        guest_ranges: host_ranges(&mem),
    });
    let (out, console) = ConsoleOut::new(
        config.console_log.as_deref(),
        config.console_socket.is_some(),
    )
    .map_err(|e| VmError::Console("--console-log", e))?;
    let (pio, serial) = legacy_devices(&vm, sink, out)?;
    event_loop.add_subscriber(Box::new(console.clone()));
    if let Some(path) = &config.console_socket {
        let server = ConsoleSocket::bind(path, console.clone(), serial.clone())
            .map_err(|e| VmError::Console("--console-socket", e))?;
        event_loop.add_subscriber(Box::new(server));
    }
    event_loop.add_console_input(serial)?;
    let mut mmio = Bus::new();
    let mut attacher = VirtioAttacher::new(&vm, &mem, &mut mmio);
    let shaper = match &config.shaper {
        Some((path, slot)) => Some(open_shaper(path, ledger, *slot)?),
        None => None,
    };
    let audit = match &config.audit {
        Some(a) => Some(NicAudit {
            audit: SliverAudit::open(&a.dir, a.identity.clone(), &a.capture)?,
            capture: a.capture.enabled,
        }),
        None => None,
    };
    // Disks first: the first one is /dev/vda.
    let disks = config
        .disks
        .iter()
        .enumerate()
        .map(|(i, spec)| drives::attach(&mut attacher, i, spec, &mut event_loop))
        .collect::<Result<Vec<_>, _>>()?;
    let nets = config
        .net
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            nic::attach(
                &mut attacher,
                i,
                spec,
                taps.get_mut(i).and_then(Option::take),
                shaper.clone(),
                audit.as_ref(),
                &mut event_loop,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stats = match &config.stats_file {
        Some(path) => {
            let counters = nets.iter().map(|n| n.counters.clone()).collect();
            let writer = Arc::new(Mutex::new(
                StatsWriter::new(path.clone(), counters)
                    .map_err(|e| VmError::Resource("--stats-file timer", e))?,
            ));
            event_loop.add_subscriber(Box::new(writer.clone()));
            Some(writer)
        }
        None => None,
    };
    let mut args = extra;
    args.extend_from_slice(attacher.cmdline_args());
    args.extend(drives::root_arg(
        &config.disks,
        config.initrd.is_some(),
        config.cmdline.as_deref(),
    ));
    let cmdline = cmdline::build(config.cmdline.as_deref(), &args)?;

    let ram_end = memory::low_ram_end(config.mem_mib);
    let kernel = loader::load_kernel(&mem, &config.kernel, ram_end)?;
    let initrd = match &config.initrd {
        Some(path) => Some(loader::load_initrd(&mem, path, kernel.end, ram_end)?),
        None => None,
    };
    linux_loader::loader::load_cmdline(&mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(VmError::WriteCmdline)?;
    pvh::write_start_info(&mem, &memory::usable_ram(config.mem_mib), initrd)?;
    regs::write_boot_tables(&mem)?;
    mptable::write(&mem, config.vcpus).map_err(VmError::Vcpus)?;
    log::info!(
        "kernel {} (PVH entry {:#x}), {} MiB, {} vCPU(s), cmdline: {}",
        config.kernel.display(),
        kernel.entry.0,
        config.mem_mib,
        config.vcpus,
        cmdline::as_string(&cmdline)
    );
    let ctx = VcpuContext {
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        exit: exit.clone(),
    };

    let supported = match supported_cpuid {
        Some(table) => table,
        None => cpuid_table::ask(&kvm)
            .map_err(|e| VmError::Resource("KVM_GET_SUPPORTED_CPUID", e.into()))?,
    };
    let vcpu_fds = (0..config.vcpus)
        .map(|id| {
            let entry = (id == 0).then_some(kernel.entry);
            vcpu::create(&vm, &supported, id, config.vcpus, entry, pvm_host)
        })
        .collect::<Result<Vec<_>, _>>()?;

    install_kick_handler()?;

    // The vCPUs take their descriptor tables, then wait at the gate, filtered, until this
    // thread is filtered too.
    let gate = Arc::new(vcpu::StartGate::default());
    let mut handles = Vec::with_capacity(vcpu_fds.len());
    for (id, fd) in (0u8..).zip(vcpu_fds) {
        match vcpu::spawn(fd, id, ctx.clone(), gate.clone()) {
            Ok(h) => handles.push(h),
            Err(e) => {
                exit.report(ExitReason::Vmm(e.to_string()));
                gate.open();
                stop_vcpus(handles);
                return Err(e.into());
            }
        }
    }
    // Before the event loop opens anything (a console client), every vCPU has its table.
    gate.wait_arrived(handles.len());
    if let Err(e) = crate::seccomp::enter(crate::seccomp::ThreadKind::EventLoop) {
        exit.report(ExitReason::Vmm(e.to_string()));
        gate.open();
        stop_vcpus(handles);
        return Err(e.into());
    }
    gate.open();
    crate::test_trigger::fire();
    event_loop.run_until_exit();
    stop_vcpus(handles);
    // What the guest wrote last, after the loop's last look.
    console.drain(None);
    log_net_counters(&nets);
    drives::log_counters(&disks);
    if let Some(stats) = stats {
        stats.lock().unwrap_or_else(|p| p.into_inner()).write_now();
    }
    // Guest memory (`mem`) is dropped only here, after every vCPU thread has been joined.
    drop(vm);
    Ok(exit
        .reason()
        .unwrap_or_else(|| ExitReason::Vmm("stopped without a recorded reason".into())))
}
