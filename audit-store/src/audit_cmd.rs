//! `slicevisor audit query` and `slicevisor audit export`.

use std::path::{Path, PathBuf};

use super::error::{AuditError, Result};
use super::export::{self, ExportRange};
use super::params::{parse_time, QueryRequest};
use super::query::{self, QueryAnswer};

/// `slicevisor audit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Which slice and sliver had flows with an address around a time, and the flows.
    Query(QueryArgs),
    /// Flows as an IPFIX file and captured headers as a pcapng file.
    Export(ExportArgs),
}

/// `slicevisor audit query` flags.
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The node's state directory (logs are under DIR/audit/<sliver>/).
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// The time of interest, RFC 3339 (e.g. 2026-11-28T03:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub at: String,
    /// How far on each side of --at to look (e.g. 30s, 5m; default 60s).
    #[arg(long, value_name = "DUR")]
    pub window: Option<String>,
    /// Destination address.
    #[arg(long, value_name = "ADDR")]
    pub dst: Option<String>,
    /// Source address.
    #[arg(long, value_name = "ADDR")]
    pub src: Option<String>,
    /// Slice name.
    #[arg(long)]
    pub slice: Option<String>,
    /// Source or destination port.
    #[arg(long)]
    pub port: Option<String>,
    /// The node's source port the outside saw (a complaint's port, after the node's NAT).
    #[arg(long)]
    pub public_port: Option<String>,
    /// List at most this many flows (default 1000).
    #[arg(long)]
    pub limit: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `slicevisor audit export` flags.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The node's state directory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: PathBuf,
    /// Leave out what ended before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Leave out what started after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Write the flows here as IPFIX (RFC 7011 messages in an RFC 5655 file).
    #[arg(long, value_name = "FILE")]
    pub ipfix: Option<PathBuf>,
    /// Write the captured headers here as pcapng.
    #[arg(long, value_name = "FILE")]
    pub pcapng: Option<PathBuf>,
}

/// Run an audit subcommand; the error names the flag or file that failed.
pub fn run(cmd: &AuditCommand) -> Result<()> {
    match cmd {
        AuditCommand::Query(a) => run_query(a),
        AuditCommand::Export(a) => run_export(a),
    }
}

fn check_state_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(AuditError::invalid(
            "--state-dir",
            format!("{} is not a directory", dir.display()),
        ))
    }
}

fn run_query(a: &QueryArgs) -> Result<()> {
    let params = QueryRequest {
        at: Some(a.at.clone()),
        window: a.window.clone(),
        dst: a.dst.clone(),
        src: a.src.clone(),
        slice: a.slice.clone(),
        port: a.port.clone(),
        public_port: a.public_port.clone(),
        limit: a.limit.clone(),
    }
    .parse("--")?;
    check_state_dir(&a.state_dir)?;
    let answer = query::run(&a.state_dir, &params)?;
    if a.json {
        let text = serde_json::to_string_pretty(&answer)
            .map_err(|e| AuditError::invalid("--json", e.to_string()))?;
        println!("{text}");
    } else {
        print!("{}", render(&answer));
    }
    Ok(())
}

fn run_export(a: &ExportArgs) -> Result<()> {
    if a.ipfix.is_none() && a.pcapng.is_none() {
        return Err(AuditError::invalid(
            "--ipfix/--pcapng",
            "give at least one output file",
        ));
    }
    let range = ExportRange {
        since_ns: a
            .since
            .as_deref()
            .map(|s| parse_time("--since", s))
            .transpose()?
            .unwrap_or(0),
        until_ns: a
            .until
            .as_deref()
            .map(|s| parse_time("--until", s))
            .transpose()?
            .unwrap_or(u64::MAX),
    };
    if range.since_ns > range.until_ns {
        return Err(AuditError::invalid("--since", "is after --until"));
    }
    check_state_dir(&a.state_dir)?;
    if let Some(out) = &a.ipfix {
        let s = export::ipfix(&a.state_dir, range, out)?;
        println!(
            "{}: {} flows, {} slice names, {} IPFIX messages",
            out.display(),
            s.flows,
            s.slices,
            s.messages
        );
    }
    if let Some(out) = &a.pcapng {
        let s = export::pcapng(&a.state_dir, range, out)?;
        println!(
            "{}: {} packets on {} sliver NICs ({} torn slots skipped)",
            out.display(),
            s.packets,
            s.interfaces,
            s.torn
        );
    }
    Ok(())
}

/// Rows as left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The answer for a person: slivers first, then the flows.
pub fn render(a: &QueryAnswer) -> String {
    let mut out = format!("window {} .. {}\n", a.from, a.to);
    if a.slivers.is_empty() {
        out.push_str("no matching flows\n");
        return out;
    }
    let mut rows = vec![[
        "SLICE", "SLICE_ID", "SLIVER", "FLOWS", "PACKETS", "BYTES", "FIRST", "LAST",
    ]
    .map(String::from)
    .to_vec()];
    for s in &a.slivers {
        rows.push(vec![
            s.slice.clone(),
            s.slice_id.to_string(),
            s.sliver.clone(),
            s.flows.to_string(),
            s.packets.to_string(),
            s.bytes.to_string(),
            s.first.clone(),
            s.last.clone(),
        ]);
    }
    out.push_str(&table(&rows));
    out.push('\n');
    let mut rows = vec![[
        "FIRST", "LAST", "SLIVER", "NIC", "DIR", "PROTO", "SRC", "SPORT", "DST", "DPORT", "PKTS",
        "BYTES", "FLAGS", "VERDICT", "PUBLIC",
    ]
    .map(String::from)
    .to_vec()];
    for f in &a.flows {
        let r = &f.record;
        let addr = |a: Option<std::net::IpAddr>| {
            a.map_or_else(
                || format!("ethertype 0x{:04x}", r.ethertype),
                |a| a.to_string(),
            )
        };
        rows.push(vec![
            f.first.clone(),
            f.last.clone(),
            r.sliver.clone(),
            format!("eth{}", r.nic),
            r.direction.as_str().to_string(),
            r.protocol.to_string(),
            addr(r.src),
            r.src_port.to_string(),
            addr(r.dst),
            r.dst_port.to_string(),
            r.packets.to_string(),
            r.bytes.to_string(),
            format!("0x{:02x}", r.tcp_flags),
            r.verdict.as_str().to_string(),
            f.public.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table(&rows));
    if a.truncated {
        out.push_str("(more flows matched; raise --limit)\n");
    }
    out
}
