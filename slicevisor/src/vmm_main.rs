//! The `slicevisor-vmm` binary: `slicevisor run` alone, the process the node daemon starts for
//! each sliver. It links only the VMM, so each sliver maps and faults in far less code than
//! the full binary (1.2 MB of text against 5.8 MB: the daemon's HTTP server, async runtime,
//! netlink and audit export are not in it); `docs/benchmarks.md` ("VMM memory") has the
//! numbers.

use clap::{Parser, Subcommand};

/// slicevisor-vmm: one sliver's VMM, as the node daemon starts it (`slicevisor run` by hand).
#[derive(Debug, Parser)]
#[command(name = "slicevisor-vmm", version)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// The one subcommand, kept so the argument list is the same as `slicevisor run`'s.
#[derive(Debug, Subcommand)]
enum Command {
    /// Boot one micro-VM in the foreground (see `slicevisor run --help`).
    Run(vmm::run_cmd::RunArgs),
}

fn main() {
    slicevisor::init_log();
    let Command::Run(args) = Cli::parse().command;
    std::process::exit(vmm::run_cmd::run(args));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_the_same_arguments_as_slicevisor_run() {
        let cli =
            Cli::try_parse_from(["slicevisor-vmm", "run", "--kernel", "/k", "--mem-mib", "16"])
                .expect("parses");
        let Command::Run(args) = cli.command;
        assert_eq!(args.mem_mib, 16);
    }
}
