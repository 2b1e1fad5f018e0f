//! Dropping to the jail's uid and gid: no supplementary groups, an empty capability bounding
//! set, no ambient capabilities, no_new_privs, and rlimits (open files, tasks, no core dumps).
//! The order follows capabilities(7): the bounding set is emptied while CAP_SETPCAP is still
//! held; setresuid from root to non-zero ids then clears the permitted, effective and ambient
//! sets (no SECBIT_KEEP_CAPS).

use super::{sys, JailError, JailSpec, MAX_OPEN_FILES, SPARE_TASKS};

/// Highest capability number the kernel may know (CAP_LAST_CAP is 40 on Linux 6.x); dropping
/// an unknown one fails with EINVAL, which ends the loop.
const CAP_LAST_POSSIBLE: libc::c_ulong = 63;

/// The VMM's privileges, all dropped: ids, capabilities, no_new_privs, rlimits.
pub(super) fn drop_to(spec: &JailSpec) -> Result<(), JailError> {
    for cap in 0..=CAP_LAST_POSSIBLE {
        // SAFETY: prctl(2) PR_CAPBSET_DROP takes a capability number by value.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(sys(format!(
                "dropping capability {cap} from the bounding set"
            )));
        }
    }
    limits(spec)?;
    drop_ids(spec)?;
    // SAFETY: prctl(2) PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // SAFETY: prctl(2) PR_SET_NO_NEW_PRIVS takes its flag by value.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(sys("PR_SET_NO_NEW_PRIVS"));
    }
    Ok(())
}

/// Groups, gid and uid set to the jail's (the keeper uses this alone).
pub(super) fn drop_ids(spec: &JailSpec) -> Result<(), JailError> {
    // SAFETY: setgroups(2) with an empty list: no memory is read.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(sys("setgroups([])"));
    }
    // SAFETY: setresgid(2) takes ids by value.
    if unsafe { libc::setresgid(spec.gid, spec.gid, spec.gid) } != 0 {
        return Err(sys(format!("setresgid({})", spec.gid)));
    }
    // SAFETY: setresuid(2) takes ids by value.
    if unsafe { libc::setresuid(spec.uid, spec.uid, spec.uid) } != 0 {
        return Err(sys(format!("setresuid({})", spec.uid)));
    }
    Ok(())
}

fn limits(spec: &JailSpec) -> Result<(), JailError> {
    let tasks = u64::from(spec.vcpus) + SPARE_TASKS;
    for (resource, value, name) in [
        (libc::RLIMIT_NOFILE, MAX_OPEN_FILES, "RLIMIT_NOFILE"),
        (libc::RLIMIT_NPROC, tasks, "RLIMIT_NPROC"),
        (libc::RLIMIT_CORE, 0, "RLIMIT_CORE"),
    ] {
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit(2) reads the struct we pass.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(sys(format!("setrlimit({name}, {value})")));
        }
    }
    Ok(())
}
