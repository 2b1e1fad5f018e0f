//! `slicevisor-init`: PID 1 of a sliver booted from the reference image. With every fork and
//! exec costing about a second on the development hosts, it does its work itself, without
//! helpers: mounts, reads the NoCloud config disk, sets the host name, the network and root's
//! ssh keys, starts dropbear (the one fork at boot), and relays the serial console, where it
//! starts a root shell (agetty with autologin) on the first key pressed and powers off on
//! the VMM's request (`@@SLIVER-POWEROFF@@`).
//!
//! Console lines for the VMM and tests: `SLIVER-READY <kernel release>`, then
//! `SLIVER-SSHD <address>:22` once dropbear runs. Everything else it says starts with
//! `slicevisor-init:`. It never panics: a step that fails is reported and skipped.

mod cidata;
mod mounts;
mod netconf;
mod relay;
mod services;

use std::io::Write;

/// Say something on the console.
fn say(what: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "slicevisor-init: {what}");
    let _ = out.flush();
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("slicevisor-init: not PID 1; this is a guest's init");
        std::process::exit(2);
    }
    mounts::mount_all();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("SLIVER-READY {}", release.trim());
    let config = cidata::read();
    let mut ssh_at = None;
    if let Some(c) = &config {
        cidata::apply_identity(c);
        if let Some(n) = &c.network {
            ssh_at = netconf::apply(n);
        }
    } else {
        say(format_args!(
            "no cidata config disk: no host name, network or keys set"
        ));
    }
    netconf::loopback_up();
    let mut services = services::Services::default();
    services.start_sshd();
    if services::Services::wait_listening(22, std::time::Duration::from_secs(60)) {
        if let Some(addr) = ssh_at {
            println!("SLIVER-SSHD {addr}:22");
        }
    } else {
        say(format_args!(
            "dropbear is not listening after 60 s; see /run/dropbear.log"
        ));
    }
    say(format_args!("console: press Enter for a root shell"));
    relay::run(&mut services);
}
