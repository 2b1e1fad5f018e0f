//! The `slicevisor` binary.

fn main() {
    std::process::exit(vmm::cli::main());
}
