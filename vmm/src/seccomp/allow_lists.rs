//! What each kind of VMM thread may call once the guest runs. Drawn from `strace -f` of a
//! VMM under the node daemon (a Debian sliver with a root disk, the config disk, a NIC with
//! shaping, audit and capture, the console socket, ssh sessions and a stop), and kept true by
//! the end-to-end tests, which all run with the filters in kill mode.
//!
//! Device code runs on both the vCPU threads (an MMIO notify is handled inline) and the event
//! loop, so both lists carry the device calls; only the event loop waits, accepts console
//! clients, kicks vCPUs and writes disks; only the audit writer creates, syncs and removes
//! log segments. Nothing may exec, fork, ptrace, mount, open sockets or change ids.

use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// `_IO(KVMIO, 0x80)`, linux/kvm.h.
const KVM_RUN: u64 = 0xae80;
/// linux/sockios.h.
const SIOCGIFMTU: u64 = 0x8921;
/// asm-generic/ioctls.h.
const FIONBIO: u64 = 0x5421;
/// linux/if_tun.h: `_IOW('T', 208, unsigned int)`, the TAP offloads a driver negotiated, set
/// when it activates or resets the NIC (from a vCPU thread's MMIO write).
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// asm-generic/ioctls.h (isatty, asked by the logger).
const TCGETS: u64 = 0x5401;

/// Calls any thread makes: memory, signals, time, locks, logging to stderr, exiting, what the
/// SIGSYS handler itself needs (pwrite64, fdatasync, exit_group), and what the stop signals'
/// handlers do: a signal sent to the process runs its handler on whichever thread does not
/// block it, and signal-hook's handler writes to its socketpair with `send` (the `sendto`
/// system call).
const COMMON: &[i64] = &[
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mincore,
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getrusage,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_restart_syscall,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_sendto,
    libc::SYS_pwrite64,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rseq,
];

/// Device work, on vCPU threads and the event loop alike: TAP and eventfd I/O, and reading
/// small files (the boot report's `/proc/self/smaps_rollup`, on the vCPU that sees the
/// guest's boot marker).
const DEVICES: &[i64] = &[
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_openat,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
];

/// Files and sockets only the event loop writes since the console's outbox: the console log
/// (rotated by rename), the stats file (written and renamed), the console clients.
const EVENT_LOOP_FILES: &[i64] = &[
    libc::SYS_sendmsg,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_shutdown,
];

/// The event loop's own: waiting, timers, console clients, disk I/O, stopping vCPUs.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_accept4,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_preadv2,
    libc::SYS_pwritev,
    libc::SYS_pwritev2,
    libc::SYS_fallocate,
    libc::SYS_tgkill,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The audit writer's: segments, index and capture files, retention, the directory lock.
const AUDIT_WRITER: &[i64] = &[
    libc::SYS_read,
    libc::SYS_pread64,
    libc::SYS_openat,
    libc::SYS_fsync,
    libc::SYS_msync,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_flock,
    libc::SYS_getdents64,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_rmdir,
];

/// The jail's keeper (`crate::jail`): waits for signals and its child, passes stop signals
/// on, and exits as the child did.
const KEEPER: &[i64] = &[
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_kill,
    libc::SYS_wait4,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_tgkill,
    libc::SYS_write,
    libc::SYS_exit_group,
    libc::SYS_exit,
    libc::SYS_restart_syscall,
];

/// ioctl requests a thread kind may make (the second argument).
fn ioctls(kind: ThreadKind) -> &'static [u64] {
    match kind {
        ThreadKind::Vcpu => &[KVM_RUN, SIOCGIFMTU, TUNSETOFFLOAD, FIONBIO, TCGETS],
        ThreadKind::EventLoop => &[SIOCGIFMTU, FIONBIO, TCGETS],
        ThreadKind::AuditWriter | ThreadKind::Keeper => &[],
    }
}

/// The system calls `kind` may make, each with the argument conditions under which it may
/// (no rule: always).
pub(super) fn rules(
    kind: ThreadKind,
) -> Result<Vec<(i64, Vec<SeccompRule>)>, seccompiler::BackendError> {
    let lists: &[&[i64]] = match kind {
        ThreadKind::Vcpu => &[COMMON, DEVICES],
        ThreadKind::EventLoop => &[COMMON, DEVICES, EVENT_LOOP, EVENT_LOOP_FILES],
        ThreadKind::AuditWriter => &[COMMON, AUDIT_WRITER],
        ThreadKind::Keeper => &[KEEPER],
    };
    let mut rules: Vec<(i64, Vec<SeccompRule>)> = lists
        .iter()
        .flat_map(|l| l.iter())
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let requests = ioctls(kind);
    if !requests.is_empty() {
        let by_request = requests
            .iter()
            .map(|&req| {
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, req)
                    .and_then(|c| SeccompRule::new(vec![c]))
            })
            .collect::<Result<Vec<_>, _>>()?;
        rules.push((libc::SYS_ioctl, by_request));
    }
    rules.sort_by_key(|(nr, _)| *nr);
    rules.dedup_by_key(|(nr, _)| *nr);
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The system calls `kind` may make.
    fn allowed(kind: ThreadKind) -> Vec<i64> {
        rules(kind).expect("rules").iter().map(|r| r.0).collect()
    }

    #[test]
    fn no_kind_may_exec_fork_trace_mount_or_change_ids() {
        let forbidden = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_setuid,
            libc::SYS_setresuid,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_init_module,
        ];
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::EventLoop,
            ThreadKind::AuditWriter,
            ThreadKind::Keeper,
        ] {
            let allowed = allowed(kind);
            for nr in forbidden {
                assert!(!allowed.contains(&nr), "{kind:?} may call {nr}");
            }
            // Only the keeper signals a process (its child); the VMM's threads never do.
            assert_eq!(
                allowed.contains(&libc::SYS_kill),
                kind == ThreadKind::Keeper,
                "{kind:?}"
            );
        }
    }

    /// A stop signal's handler (signal-hook: `send` on its socketpair) may run on any VMM
    /// thread; a thread whose list lacked `sendto` would be killed by a plain stop.
    #[test]
    fn every_vmm_thread_may_run_the_stop_signal_handlers() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::EventLoop,
            ThreadKind::AuditWriter,
        ] {
            let allowed = allowed(kind);
            for nr in [libc::SYS_sendto, libc::SYS_write, libc::SYS_rt_sigreturn] {
                assert!(allowed.contains(&nr), "{kind:?} lacks {nr}");
            }
        }
    }

    /// The vCPU threads handle the guest's register accesses: they may not rename, remove,
    /// truncate or sync files, nor use sockets beyond the stop handlers' `send`.
    #[test]
    fn vcpus_may_not_change_files() {
        let vcpu = allowed(ThreadKind::Vcpu);
        for &nr in EVENT_LOOP_FILES {
            assert!(!vcpu.contains(&nr), "a vCPU may call {nr}");
        }
        let event_loop = allowed(ThreadKind::EventLoop);
        assert!(EVENT_LOOP_FILES.iter().all(|nr| event_loop.contains(nr)));
    }

    #[test]
    fn only_vcpus_run_kvm_and_the_audit_writer_has_no_ioctl() {
        let audit = allowed(ThreadKind::AuditWriter);
        assert!(!audit.contains(&libc::SYS_ioctl));
        assert!(ioctls(ThreadKind::Vcpu).contains(&KVM_RUN));
        assert!(!ioctls(ThreadKind::EventLoop).contains(&KVM_RUN));
        // KVM_RUN is _IO(0xAE, 0x80) (linux/kvm.h, asm-generic/ioctl.h: type << 8 | nr).
        assert_eq!(KVM_RUN, (0xae << 8) | 0x80);
    }
}
