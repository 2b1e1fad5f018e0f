//! What the two binaries of this package share: `slicevisor` (every command) and
//! `slicevisor-vmm` (only `run`, the process the node daemon starts for each sliver).

/// Log to stderr at `RUST_LOG`'s level (default `info`), without module targets.
pub fn init_log() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_target(false)
        .init();
}
