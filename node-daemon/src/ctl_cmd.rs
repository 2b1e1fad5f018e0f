//! `slicevisor ctl`: a client for the node API, with readable tables or `--json`.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::client::{
    cli_body, json_line, sliver_path, try_request_within, Response, RESPONSE_TIMEOUT,
};
use super::spec::MAX_BODY_BYTES;

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/slicevisor/node.sock";

/// `slicevisor ctl` flags.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the daemon's reply (a stop waits for the guest first).
    #[arg(long, default_value_t = RESPONSE_TIMEOUT.as_secs(), value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// What to do.
    #[command(subcommand)]
    pub action: Action,
}

/// `slicevisor ctl` subcommands, one per route.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// GET /healthz
    Health,
    /// GET /slivers
    List,
    /// GET /slivers/{name}
    Show {
        /// Sliver name.
        name: String,
    },
    /// PUT /slivers/{name} with the spec in FILE (JSON; `-` for stdin)
    Create {
        /// Sliver name.
        name: String,
        /// Spec file.
        #[arg(long)]
        spec: PathBuf,
    },
    /// POST /slivers/{name}/start
    Start {
        /// Sliver name.
        name: String,
    },
    /// POST /slivers/{name}/stop
    Stop {
        /// Sliver name.
        name: String,
    },
    /// DELETE /slivers/{name}
    Delete {
        /// Sliver name.
        name: String,
    },
    /// PATCH /slivers/{name}: change network and CPU limits
    Limits {
        /// Sliver name.
        name: String,
        /// Share weight.
        #[arg(long)]
        share: Option<u32>,
        /// Guaranteed rate, bit/s.
        #[arg(long)]
        min_rate: Option<u64>,
        /// Cap, bit/s.
        #[arg(long)]
        max_rate: Option<u64>,
        /// Daily budget, KB.
        #[arg(long)]
        max_kbyte: Option<u64>,
        /// Daily threshold, KB.
        #[arg(long)]
        thresh_kbyte: Option<u64>,
        /// CPU weight.
        #[arg(long)]
        cpu_share: Option<u32>,
        /// CPU cap, percent of one CPU.
        #[arg(long)]
        cpu_max_pct: Option<u32>,
        /// CPU guarantee, percent of one CPU (the node refuses one that does not fit).
        #[arg(long)]
        cpu_pct: Option<u32>,
    },
    /// PATCH /slivers/{name}: set the published ports (none given: remove them all)
    Ports {
        /// Sliver name.
        name: String,
        /// A port of the node's uplink address forwarded to the sliver: PROTO:NODE_PORT:SLIVER_PORT
        /// (e.g. tcp:2222:22). Repeatable.
        #[arg(long, value_name = "PROTO:NODE_PORT:SLIVER_PORT")]
        publish: Vec<String>,
    },
    /// GET /metrics
    Metrics,
    /// attach to the sliver's serial console (Ctrl-] detaches)
    Console {
        /// Sliver name.
        name: String,
        /// Watch without typing.
        #[arg(long)]
        read_only: bool,
    },
    /// GET /slivers/{name}/console: the end of the sliver's console log
    ConsoleLog {
        /// Sliver name.
        name: String,
        /// Bytes from the end (at most 2 MiB).
        #[arg(long, default_value_t = 65536)]
        tail: u64,
    },
    /// ssh to the sliver as root, from the node (in the daemon's network namespace)
    Ssh {
        /// Sliver name.
        name: String,
        /// Private key to use (default: ssh's own choice).
        #[arg(long, short = 'i')]
        identity: Option<PathBuf>,
        /// Command to run instead of a shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn sliver_row(s: &Value) -> String {
    format!(
        "{:<20} {:<20} {:<9} {:>8} {:>12} {:>12}",
        text(&s["name"]),
        text(&s["slice"]),
        text(&s["state"]),
        text(&s["pid"]),
        text(&s["counters"]["tx_bytes"]),
        text(&s["counters"]["rx_bytes"]),
    )
}

fn table(action: &Action, body: &Value) -> String {
    match action {
        Action::List => {
            let mut out = format!(
                "{:<20} {:<20} {:<9} {:>8} {:>12} {:>12}\n",
                "NAME", "SLICE", "STATE", "PID", "TX BYTES", "RX BYTES"
            );
            for s in body.as_array().into_iter().flatten() {
                out.push_str(&sliver_row(s));
                out.push('\n');
            }
            out
        }
        Action::Health => format!("{}\n", text(&body["status"])),
        _ => {
            let mut out = String::new();
            for key in ["name", "slice", "state", "pid", "started_at", "exit_reason"] {
                out.push_str(&format!("{key:<12} {}\n", text(&body[key])));
            }
            if let Some(c) = body["counters"].as_object() {
                for (k, v) in c {
                    out.push_str(&format!("{k:<12} {}\n", text(v)));
                }
            }
            if let Some(net) = body["spec"]["net"].as_object() {
                for (k, v) in net {
                    out.push_str(&format!("{k:<12} {}\n", text(v)));
                }
            }
            out
        }
    }
}

/// Read a spec from `path` (`-`: stdin), at most what the daemon accepts.
fn read_spec(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let what = format!("--spec {}", path.display());
    let source: Box<dyn Read> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(path).map_err(|e| format!("{what}: {e}"))?)
    };
    let mut body = Vec::new();
    let limit = u64::try_from(MAX_BODY_BYTES).unwrap_or(u64::MAX) + 1;
    source
        .take(limit)
        .read_to_end(&mut body)
        .map_err(|e| format!("{what}: {e}"))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(format!(
            "{what}: longer than the {MAX_BODY_BYTES} bytes the daemon accepts"
        ));
    }
    Ok(body)
}

fn request_for(action: &Action) -> Result<(&'static str, String, Option<Vec<u8>>), String> {
    let path = |name: &str, suffix: &str| sliver_path(name, suffix).map_err(|e| e.to_string());
    Ok(match action {
        Action::Health => ("GET", "/healthz".into(), None),
        Action::List => ("GET", "/slivers".into(), None),
        Action::Metrics => ("GET", "/metrics".into(), None),
        Action::Show { name } => ("GET", path(name, "")?, None),
        Action::Start { name } => ("POST", path(name, "/start")?, None),
        Action::Stop { name } => ("POST", path(name, "/stop")?, None),
        Action::Delete { name } => ("DELETE", path(name, "")?, None),
        Action::Create { name, spec } => ("PUT", path(name, "")?, Some(read_spec(spec)?)),
        Action::ConsoleLog { name, tail } => (
            "GET",
            format!("{}?tail={tail}", path(name, "/console")?),
            None,
        ),
        Action::Ssh { .. } | Action::Console { .. } => return Err("not a plain request".into()),
        Action::Limits {
            name,
            share,
            min_rate,
            max_rate,
            max_kbyte,
            thresh_kbyte,
            cpu_share,
            cpu_max_pct,
            cpu_pct,
        } => {
            let mut patch = serde_json::Map::new();
            for (k, v) in [
                ("net_share", share.map(u64::from)),
                ("net_min_rate", *min_rate),
                ("net_max_rate", *max_rate),
                ("net_max_kbyte", *max_kbyte),
                ("net_thresh_kbyte", *thresh_kbyte),
                ("cpu_share", cpu_share.map(u64::from)),
                ("cpu_max_pct", cpu_max_pct.map(u64::from)),
                ("cpu_pct", cpu_pct.map(u64::from)),
            ] {
                if let Some(v) = v {
                    patch.insert(k.into(), json!(v));
                }
            }
            (
                "PATCH",
                path(name, "")?,
                Some(Value::Object(patch).to_string().into_bytes()),
            )
        }
        Action::Ports { name, publish } => {
            let ports = publish
                .iter()
                .map(|p| parse_publish(p))
                .collect::<Result<Vec<_>, _>>()?;
            (
                "PATCH",
                path(name, "")?,
                Some(json!({ "ports": ports }).to_string().into_bytes()),
            )
        }
    })
}

/// Run one `ctl` command; returns the exit code (0 ok, 1 error).
pub fn run(args: &CtlArgs) -> i32 {
    let timeout = Duration::from_secs(args.timeout);
    if let Action::Ssh {
        name,
        identity,
        command,
    } = &args.action
    {
        return crate::ctl_ssh::run(&args.socket, name, identity.as_ref(), command, timeout);
    }
    if let Action::Console { name, read_only } = &args.action {
        return crate::ctl_console::run(&args.socket, name, *read_only);
    }
    let (method, path, body) = match request_for(&args.action) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("slicevisor: error: {e}");
            return 1;
        }
    };
    let response: Response =
        match try_request_within(&args.socket, method, &path, body.as_deref(), timeout) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("slicevisor: error: --socket {e}");
                return 1;
            }
        };
    if matches!(args.action, Action::Metrics | Action::ConsoleLog { .. }) && response.status == 200
    {
        print!("{}", response.body);
        return 0;
    }
    let body = match cli_body(&response) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if args.json {
        println!("{}", json_line(&body));
    } else if !body.is_null() {
        print!("{}", table(&args.action, &body));
    }
    0
}

/// `PROTO:NODE_PORT:SLIVER_PORT` as the API's port object (the daemon checks the values).
fn parse_publish(text: &str) -> Result<Value, String> {
    let bad =
        || format!("--publish {text:?}: expected PROTO:NODE_PORT:SLIVER_PORT, e.g. tcp:2222:22");
    let mut parts = text.split(':');
    let (Some(proto), Some(node), Some(sliver), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let node: u64 = node.parse().map_err(|_| bad())?;
    let sliver: u64 = sliver.parse().map_err(|_| bad())?;
    Ok(json!({"proto": proto, "node_port": node, "sliver_port": sliver}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_change_the_request_are_refused_before_sending() {
        for name in [
            "victim?x=1",
            "victim#frag",
            "a\r\nDELETE /slivers/b",
            "../healthz",
        ] {
            let e = request_for(&Action::Delete { name: name.into() }).expect_err(name);
            assert!(e.contains("is not a sliver name"), "{e}");
        }
        let (method, path, _) = request_for(&Action::Stop {
            name: "web-1".into(),
        })
        .expect("a good name");
        assert_eq!((method, path.as_str()), ("POST", "/slivers/web-1/stop"));
    }

    #[test]
    fn limits_send_only_the_fields_given() {
        let (method, path, body) = request_for(&Action::Limits {
            name: "web-1".into(),
            share: None,
            min_rate: None,
            max_rate: None,
            max_kbyte: None,
            thresh_kbyte: None,
            cpu_share: Some(2),
            cpu_max_pct: None,
            cpu_pct: Some(30),
        })
        .expect("a good name");
        assert_eq!((method, path.as_str()), ("PATCH", "/slivers/web-1"));
        let body: Value = serde_json::from_slice(&body.expect("a body")).expect("JSON");
        assert_eq!(body, json!({"cpu_share": 2, "cpu_pct": 30}));
    }

    #[test]
    fn spec_files_are_read_up_to_the_body_limit() {
        let e = read_spec(std::path::Path::new("/dev/zero")).expect_err("endless");
        assert!(e.contains("longer than the 65536 bytes"), "{e}");
        let e = read_spec(std::path::Path::new("/nonexistent/spec.json")).expect_err("absent");
        assert!(e.starts_with("--spec /nonexistent/spec.json: "), "{e}");
    }
}
