//! Finding and reading the NoCloud config disk (a FAT disk labelled `cidata`), and applying
//! what it says of the guest's identity: host name and root's ssh keys.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;

use guest_init::nocloud::{Config, LABEL};

use crate::mounts::mount;
use crate::say;

const MOUNT_AT: &str = "/run/cidata";

/// The FAT volume label in a boot sector: at offset 43 for FAT12/16, 71 for FAT32 (both 11
/// bytes, space-padded; Microsoft's FAT specification, "BS_VolLab").
fn fat_label(boot: &[u8; 512]) -> Option<String> {
    if boot[510..512] != [0x55, 0xaa] {
        return None;
    }
    let fat32 = boot[82..90].starts_with(b"FAT32");
    let at = if fat32 { 71 } else { 43 };
    let label = std::str::from_utf8(&boot[at..at + 11]).ok()?;
    Some(label.trim_end().to_string())
}

/// The block device holding the config disk, if any.
fn find() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vd"))
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let dev = format!("/dev/{n}");
        let mut boot = [0u8; 512];
        std::fs::File::open(&dev).ok()?.read_exact(&mut boot).ok()?;
        fat_label(&boot)
            .filter(|l| l.eq_ignore_ascii_case(LABEL))
            .map(|_| dev)
    })
}

/// Mount and read the config disk; `None` (said on the console) when there is none or it
/// does not parse.
pub fn read() -> Option<Config> {
    let dev = find()?;
    if !mount(&dev, MOUNT_AT, "vfat", libc::MS_RDONLY, "") {
        return None;
    }
    let file = |name: &str| std::fs::read_to_string(format!("{MOUNT_AT}/{name}")).ok();
    let parsed = Config::parse(
        &file("meta-data").unwrap_or_default(),
        &file("user-data").unwrap_or_default(),
        file("network-config").as_deref(),
    );
    match parsed {
        Ok(c) => Some(c),
        Err((name, e)) => {
            say(format_args!("{dev}: {name}: {e}"));
            None
        }
    }
}

/// `RNDADDENTROPY` of `<linux/random.h>`: `_IOW('R', 0x03, int [2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// Add `seed` to the kernel's pool, credited (it comes from the node's CSPRNG): the CRNG is
/// ready at once instead of tens of seconds after boot.
fn seed_random(seed: &[u8]) {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open("/dev/urandom") else {
        return;
    };
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + seed.len());
    let bits = i32::try_from(seed.len() * 8).unwrap_or(0);
    let len = i32::try_from(seed.len()).unwrap_or(0);
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&len.to_ne_bytes());
    info.extend_from_slice(seed);
    info.resize(info.len().next_multiple_of(4), 0);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of `buf_size` bytes of buffer, which
    // `info` holds.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            RNDADDENTROPY,
            info.as_ptr(),
        )
    };
    if rc != 0 {
        say(format_args!(
            "seeding the RNG: {}",
            std::io::Error::last_os_error()
        ));
    }
}

/// Seed the RNG, set the host name and root's `authorized_keys` (exactly the slice's keys).
pub fn apply_identity(c: &Config) {
    if let Some(seed) = c.user.random_seed.as_ref().and_then(|s| s.bytes()) {
        seed_random(&seed);
    }
    let host = &c.user.hostname;
    // SAFETY: sethostname(2) reads `len` bytes of the name.
    if unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) } != 0 {
        say(format_args!(
            "sethostname {host}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let write = |path: &str, text: String, mode: u32| {
        let done = std::fs::write(path, text)
            .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)));
        if let Err(e) = done {
            say(format_args!("writing {path}: {e}"));
        }
    };
    write("/etc/hostname", format!("{host}\n"), 0o644);
    write(
        "/etc/hosts",
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{host}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ),
        0o644,
    );
    let _ = std::fs::create_dir_all("/root/.ssh");
    let _ = std::fs::set_permissions("/root/.ssh", std::fs::Permissions::from_mode(0o700));
    let mut keys = c.user.ssh_authorized_keys.join("\n");
    keys.push('\n');
    write("/root/.ssh/authorized_keys", keys, 0o600);
    say(format_args!(
        "host name {host}; {} ssh key(s) for root",
        c.user.ssh_authorized_keys.len()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_of_fat16_and_fat32_boot_sectors() {
        let mut b = [0u8; 512];
        assert_eq!(fat_label(&b), None, "no boot signature");
        b[510] = 0x55;
        b[511] = 0xaa;
        b[43..54].copy_from_slice(b"CIDATA     ");
        b[54..62].copy_from_slice(b"FAT12   ");
        assert_eq!(fat_label(&b).as_deref(), Some("CIDATA"));
        b[82..90].copy_from_slice(b"FAT32   ");
        b[71..82].copy_from_slice(b"cidata     ");
        assert_eq!(fat_label(&b).as_deref(), Some("cidata"));
    }
}
