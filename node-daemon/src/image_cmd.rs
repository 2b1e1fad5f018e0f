//! `slicevisor image`: the node's image store through its daemon (`import`, `list`, `show`,
//! `delete`).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::client::{
    cli_body, json_line, runtime, try_request_within, upload, Response, RESPONSE_TIMEOUT,
};
use crate::ctl_cmd::DEFAULT_SOCKET;
use crate::images::valid_image_name;

/// How long an upload may take: 1 GiB at a few hundred MB/s, hashed and synced.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(1800);

/// `slicevisor image` flags.
#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: ImageAction,
}

/// `slicevisor image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageAction {
    /// PUT /images/{name}: import FILE (an ext2/3/4 file system image) as NAME
    Import {
        /// Image name (a spec's `vref`).
        name: String,
        /// The image file.
        file: PathBuf,
    },
    /// GET /images
    List,
    /// GET /images/{name}
    Show {
        /// Image name.
        name: String,
    },
    /// DELETE /images/{name} (refused while a sliver's vref names it)
    Delete {
        /// Image name.
        name: String,
    },
}

fn row(i: &Value) -> String {
    // The size as a plain string: a JSON value's Display ignores the column's width.
    let size = i["size"]
        .as_u64()
        .map_or_else(|| "-".into(), |n| n.to_string());
    format!(
        "{:<24} {:>14} {}\n",
        i["name"].as_str().unwrap_or("-"),
        size,
        i["sha256"].as_str().unwrap_or("-")
    )
}

/// Run one `image` command; returns the exit code (0 ok, 1 error).
pub fn run(args: &ImageArgs) -> i32 {
    let name = match &args.action {
        ImageAction::Import { name, .. }
        | ImageAction::Show { name }
        | ImageAction::Delete { name } => Some(name),
        ImageAction::List => None,
    };
    if let Some(name) = name.filter(|n| !valid_image_name(n)) {
        eprintln!("slicevisor: error: {name:?} is not an image name ([a-z0-9][a-z0-9._-]{{0,62}})");
        return 1;
    }
    let path = |n: &str| format!("/images/{n}");
    let reply = match &args.action {
        ImageAction::Import { name, file } => {
            if let Err(e) = std::fs::File::open(file) {
                eprintln!("slicevisor: error: {}: {e}", file.display());
                return 1;
            }
            // A name that is taken is refused before the upload, not after a partial one
            // (the daemon answers at once and closes, which cuts the upload off).
            if let Ok(r) =
                try_request_within(&args.socket, "GET", &path(name), None, RESPONSE_TIMEOUT)
            {
                if r.status == 200 {
                    eprintln!(
                        "slicevisor: error: 409 image {name:?} exists; images never change: delete it first (field name)"
                    );
                    return 1;
                }
            }
            runtime(&args.socket)
                .and_then(|rt| rt.block_on(upload(&args.socket, &path(name), file, UPLOAD_TIMEOUT)))
        }
        ImageAction::List => {
            try_request_within(&args.socket, "GET", "/images", None, RESPONSE_TIMEOUT)
        }
        ImageAction::Show { name } => {
            try_request_within(&args.socket, "GET", &path(name), None, RESPONSE_TIMEOUT)
        }
        ImageAction::Delete { name } => {
            try_request_within(&args.socket, "DELETE", &path(name), None, RESPONSE_TIMEOUT)
        }
    };
    let response: Response = match reply {
        Ok(r) => r,
        Err(e) => {
            eprintln!("slicevisor: error: --socket {e}");
            return 1;
        }
    };
    let body = match cli_body(&response) {
        Ok(body) => body,
        Err(code) => return code,
    };
    if args.json {
        println!("{}", json_line(&body));
        return 0;
    }
    let header = || println!("{:<24} {:>14} SHA256", "NAME", "BYTES");
    match &args.action {
        ImageAction::List => {
            header();
            for i in body.as_array().into_iter().flatten() {
                print!("{}", row(i));
            }
        }
        ImageAction::Delete { name } => println!("image {name} deleted"),
        ImageAction::Import { .. } | ImageAction::Show { .. } => {
            header();
            print!("{}", row(&body));
        }
    }
    0
}
