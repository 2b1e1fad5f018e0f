//! The `slicevisor` binary: one command line over the crates that do the work. `run` is one
//! sliver's VMM ([`vmm`]), `node` the node daemon and `ctl` and `image` its clients
//! ([`node_daemon`]), `audit` queries and exports the flow logs ([`audit_store`]).

use clap::{Parser, Subcommand};
use vmm::exit::EXIT_SETUP_ERROR;

/// slicevisor: PlanetLab-style slivers as KVM micro-VMs.
#[derive(Debug, Parser)]
#[command(name = "slicevisor", version)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Boot one micro-VM in the foreground; guest console on stdout, VMM log on stderr.
    ///
    /// Exit codes: 0 guest powered off or stopped by SIGINT/SIGTERM; 1 setup error;
    /// 2 guest kernel panic; 3 triple fault; 4 KVM error; 5 VMM error.
    Run(Box<vmm::run_cmd::RunArgs>),
    /// Serve the node API (HTTP + JSON) on a unix socket, keeping slivers in a state directory.
    Node(node_daemon::node_cmd::NodeArgs),
    /// Talk to a running node daemon.
    Ctl(node_daemon::ctl_cmd::CtlArgs),
    /// The node's reference images (vrefs), through its daemon.
    Image(node_daemon::image_cmd::ImageArgs),
    /// Query and export the flow audit logs of a state directory.
    Audit {
        /// What to do.
        #[command(subcommand)]
        command: audit_store::audit_cmd::AuditCommand,
    },
}

/// An error that ends the command: printed on one line, exit code 1.
fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("slicevisor: error: {e}");
    EXIT_SETUP_ERROR
}

fn main() {
    slicevisor::init_log();
    let code = match Cli::parse().command {
        Command::Run(args) => vmm::run_cmd::run(*args),
        Command::Node(args) => node_daemon::node_cmd::run(args).map_or_else(fail, |()| 0),
        Command::Ctl(args) => node_daemon::ctl_cmd::run(&args),
        Command::Image(args) => node_daemon::image_cmd::run(&args),
        Command::Audit { command } => {
            audit_store::audit_cmd::run(&command).map_or_else(fail, |()| 0)
        }
    };
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_subcommands_parse() {
        use audit_store::audit_cmd::AuditCommand;
        let cli = Cli::try_parse_from([
            "slicevisor",
            "audit",
            "query",
            "--state-dir",
            "/s",
            "--dst",
            "192.0.2.1",
            "--at",
            "2026-11-28T03:00:00Z",
            "--window",
            "5m",
            "--json",
        ])
        .expect("parse");
        let Command::Audit {
            command: AuditCommand::Query(q),
        } = cli.command
        else {
            panic!("parsed as audit query");
        };
        assert_eq!(
            (q.dst.as_deref(), q.window.as_deref(), q.json),
            (Some("192.0.2.1"), Some("5m"), true)
        );
        assert!(
            Cli::try_parse_from(["slicevisor", "audit", "query", "--state-dir", "/s"]).is_err()
        );
        let cli = Cli::try_parse_from([
            "slicevisor",
            "audit",
            "export",
            "--state-dir",
            "/s",
            "--ipfix",
            "/f",
            "--since",
            "2026-11-28T00:00:00Z",
        ])
        .expect("parse");
        assert!(matches!(
            cli.command,
            Command::Audit {
                command: AuditCommand::Export(_)
            }
        ));
    }

    #[test]
    fn every_subcommand_is_there() {
        for sub in ["run", "node", "ctl", "audit"] {
            let e = Cli::try_parse_from(["slicevisor", sub, "--help"]).expect_err("help");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{sub}");
        }
    }
}
