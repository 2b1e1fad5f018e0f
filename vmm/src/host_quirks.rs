//! Workarounds for test hosts whose KVM is `kvm_pvm` in native mode.
//!
//! There, guest ring-0 code is emulated and `KVM_SET_CPUID2` is ignored, so the guest sees the
//! host's CPUID and would use instructions the emulator cannot execute. The only lever left is
//! the kernel command line. On real hardware none of this applies and nothing is added.

use std::path::Path;

/// Where the PVM module says whether it runs in native mode.
pub const PVM_NATIVE_PARAM: &str = "/sys/module/kvm_pvm/parameters/pvm_native";

/// Kernel arguments that hide the CPU features the PVM emulator cannot execute.
pub const PVM_CMDLINE_WORKAROUNDS: [&str; 2] = [
    "noxsave",
    "clearcpuid=smap,smep,popcnt,fsgsbase,cx16,pcid,invpcid,rdrand,rdseed,rdpid,umip",
];

/// Whether to apply the workarounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum QuirkMode {
    /// Apply them when a PVM-native host is detected.
    #[default]
    Auto,
    /// Always apply them.
    On,
    /// Never apply them.
    Off,
}

/// Whether this host's KVM is PVM in native mode.
pub fn pvm_native_host() -> bool {
    pvm_native_at(Path::new(PVM_NATIVE_PARAM))
}

fn pvm_native_at(param: &Path) -> bool {
    std::fs::read_to_string(param)
        .map(|v| v.trim() == "Y")
        .unwrap_or(false)
}

/// The command-line workarounds to add, and why (for the log). Empty when none apply.
pub fn cmdline_workarounds(mode: QuirkMode, detected: bool) -> (Vec<String>, &'static str) {
    let apply = match mode {
        QuirkMode::On => Some("forced on by --host-quirks on"),
        QuirkMode::Off => None,
        QuirkMode::Auto => {
            detected.then_some("PVM-native KVM host detected (kvm_pvm pvm_native=Y)")
        }
    };
    match apply {
        Some(why) => (PVM_CMDLINE_WORKAROUNDS.map(String::from).to_vec(), why),
        None if mode == QuirkMode::Off => (Vec::new(), "disabled by --host-quirks off"),
        None => (Vec::new(), "hardware-virtualised host, none needed"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn detection_reads_the_module_parameter() {
        let mut yes = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(yes, "Y").expect("write");
        assert!(pvm_native_at(yes.path()));
        let mut no = tempfile::NamedTempFile::new().expect("tmp");
        writeln!(no, "N").expect("write");
        assert!(!pvm_native_at(no.path()));
        assert!(!pvm_native_at(Path::new("/nonexistent/param")));
    }

    #[test]
    fn modes() {
        assert_eq!(cmdline_workarounds(QuirkMode::Auto, true).0.len(), 2);
        assert!(cmdline_workarounds(QuirkMode::Auto, false).0.is_empty());
        assert_eq!(cmdline_workarounds(QuirkMode::On, false).0.len(), 2);
        assert!(cmdline_workarounds(QuirkMode::Off, true).0.is_empty());
        assert_eq!(cmdline_workarounds(QuirkMode::On, false).0[0], "noxsave");
    }
}
