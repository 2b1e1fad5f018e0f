//! A sliver's serial console through the control socket: `GET /slivers/{name}/console?tail=
//! BYTES` (the end of its bounded log) and `POST /slivers/{name}/console/attach?mode=rw|ro`,
//! an HTTP upgrade (`Upgrade: slicevisor-console`, as Docker's attach does) after which the
//! connection carries the console both ways: several clients may watch (`ro`), one types
//! (`rw`; a second is told so and watches). The VMM keeps the log and the clients
//! (`vmm::console`); the daemon only connects them.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::api::{ApiError, Name, Reply};
use crate::error::SliverError;
use crate::node::Node;
use crate::state::SliverState;

/// The protocol name of the upgrade.
pub const UPGRADE: &str = "slicevisor-console";
/// Default and largest `tail`, bytes.
const DEFAULT_TAIL: u64 = 64 << 10;
const MAX_TAIL: u64 = 2 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TailQuery {
    tail: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AttachQuery {
    mode: Option<String>,
}

/// The last `want` bytes of `files` taken as one stream, oldest first.
fn tail(files: &[std::path::PathBuf], want: u64) -> Vec<u8> {
    let mut chunks = Vec::new();
    let mut left = want;
    for path in files.iter().rev() {
        if left == 0 {
            break;
        }
        let Ok(mut f) = std::fs::File::open(path) else {
            continue;
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let take = len.min(left);
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(len - take)).is_ok() && f.take(take).read_to_end(&mut buf).is_ok()
        {
            left -= buf.len() as u64;
            chunks.push(buf);
        }
    }
    chunks.into_iter().rev().flatten().collect()
}

async fn show_tail(
    State(node): State<Arc<Node>>,
    Name(name): Name,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Reply<Response> {
    node.show(&name)?;
    let q: TailQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| SliverError::invalid("query", format!("query string: {e}")))?;
    let want = match q.tail {
        None => DEFAULT_TAIL,
        Some(t) => t
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= MAX_TAIL)
            .ok_or_else(|| {
                SliverError::invalid(
                    "tail",
                    format!("{t:?} is not a byte count of at most {MAX_TAIL}"),
                )
            })?,
    };
    let files = node.console_logs(&name);
    let bytes = tokio::task::spawn_blocking(move || tail(&files, want))
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

async fn attach(
    State(node): State<Arc<Node>>,
    Name(name): Name,
    mut req: Request,
) -> Reply<Response> {
    let record = node.registry().get(&name)?;
    let q: AttachQuery = serde_urlencoded::from_str(req.uri().query().unwrap_or(""))
        .map_err(|e| SliverError::invalid("query", format!("query string: {e}")))?;
    let mode = match q.mode.as_deref() {
        None | Some("rw") => vmm::console::MODE_WRITE,
        Some("ro") => vmm::console::MODE_READ,
        Some(other) => {
            return Err(SliverError::invalid("mode", format!("{other:?} is not rw or ro")).into())
        }
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(UPGRADE));
    if !upgrade {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            format!("attaching needs Connection: Upgrade and Upgrade: {UPGRADE}"),
        ));
    }
    if record.state != SliverState::Running {
        return Err(SliverError::conflict(None, format!("sliver {name:?} is not running")).into());
    }
    let mut vm = tokio::net::UnixStream::connect(node.console_socket(&name))
        .await
        .map_err(|e| SliverError::conflict(None, format!("sliver {name:?}'s console: {e}")))?;
    vm.write_all(&[mode])
        .await
        .map_err(|e| SliverError::conflict(None, format!("sliver {name:?}'s console: {e}")))?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut client = TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut vm).await;
            }
            Err(e) => log::debug!("console upgrade of {name}: {e}"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, UPGRADE)
        .body(Body::empty())
        .unwrap_or_default())
}

/// The console routes, to merge into the API's router.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/slivers/{name}/console", get(show_tail))
        .route("/slivers/{name}/console/attach", post(attach))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_spans_the_rotated_log() {
        let dir = tempfile::tempdir().expect("tmp");
        let (old, new) = (dir.path().join("a.1"), dir.path().join("a"));
        std::fs::write(&old, b"0123456789").expect("old");
        std::fs::write(&new, b"abcdef").expect("new");
        let files = [old, new];
        assert_eq!(tail(&files, 3), b"def");
        assert_eq!(tail(&files, 8), b"89abcdef");
        assert_eq!(tail(&files, 100), b"0123456789abcdef");
        assert_eq!(tail(&[dir.path().join("none")], 10), b"");
    }
}
