//! Getting a Linux kernel running: load it, its initrd and command line, describe memory.

pub mod cmdline;
pub mod loader;
pub mod pvh;
