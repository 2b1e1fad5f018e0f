//! The node API's client side: HTTP/1.1 over the node's unix socket (hyper), one request per
//! connection, with a connect and a response timeout, for `slicevisor ctl` (the tests use it
//! too). Sliver names are checked with the server's rule and path segments percent-encoded
//! before anything is sent.

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::spec::valid_sliver_name;

/// How long a connection may take to be accepted.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply may take by default: a stop waits for the guest (30 s by default), then
/// SIGTERM (10 s), then SIGKILL (10 s).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(75);
/// Largest response body read.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// What a path segment may hold unencoded: RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A response: status and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body as text.
    pub body: String,
}

impl Response {
    /// The body as JSON.
    pub fn try_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_str(&self.body)
    }
}

/// Why a request got no response; each names the socket and the step.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A sliver name the server would refuse (never sent).
    #[error("{0:?} is not a sliver name ([a-z0-9-], 1 to 63 characters)")]
    BadName(String),
    /// The socket could not be connected.
    #[error("{socket}: connecting: {source}")]
    Connect {
        /// The control socket.
        socket: String,
        /// Why.
        source: std::io::Error,
    },
    /// Nothing answered in time.
    #[error("{socket}: no answer within {waited:?} ({step})")]
    Timeout {
        /// The control socket.
        socket: String,
        /// How long we waited.
        waited: Duration,
        /// What we were waiting for.
        step: &'static str,
    },
    /// The exchange failed.
    #[error("{socket}: {step}: {source}")]
    Http {
        /// The control socket.
        socket: String,
        /// Which step.
        step: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The path of sliver `name`'s resource, plus `suffix` (`""`, `/start`, `/stop`): the name
/// checked with the server's rule and percent-encoded.
pub fn sliver_path(name: &str, suffix: &str) -> Result<String, ClientError> {
    if !valid_sliver_name(name) {
        return Err(ClientError::BadName(name.to_string()));
    }
    Ok(format!(
        "/slivers/{}{suffix}",
        utf8_percent_encode(name, SEGMENT)
    ))
}

/// A request body: bytes in memory or a stream (an image upload).
type ReqBody =
    http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// One request on a fresh connection, waiting at most `timeout` for the reply.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let body = Full::new(Bytes::copy_from_slice(body.unwrap_or(b"")))
        .map_err(|never| match never {})
        .boxed();
    exchange(socket, method, path, ("application/json", body), timeout).await
}

/// `PUT` the file at `file` to `path` as `application/octet-stream`, streamed.
pub async fn upload(
    socket: &Path,
    path: &str,
    file: &Path,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|source| ClientError::Connect {
            socket: file.display().to_string(),
            source,
        })?;
    let chunks = futures_util::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 1 << 20];
        match tokio::io::AsyncReadExt::read(&mut f, &mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(hyper::body::Frame::data(Bytes::from(buf))), f))
            }
            Err(e) => Some((
                Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>),
                f,
            )),
        }
    });
    let body = http_body_util::StreamBody::new(chunks).boxed();
    exchange(
        socket,
        "PUT",
        path,
        ("application/octet-stream", body),
        timeout,
    )
    .await
}

/// Send `method path` with `(content type, body)` on a fresh connection to `socket`; wait at
/// most `timeout` for the whole reply.
async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    (content_type, body): (&str, ReqBody),
    timeout: Duration,
) -> Result<Response, ClientError> {
    let name = socket.display().to_string();
    let http = |step: &'static str| {
        let socket = name.clone();
        move |e: Box<dyn std::error::Error + Send + Sync>| ClientError::Http {
            socket,
            step,
            source: e,
        }
    };
    let stream = connect(socket).await?;
    let exchange = async {
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| http("handshake")(e.into()))?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "node")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(body)
            .map_err(|e| http("building the request")(e.into()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| http("sending the request")(e.into()))?;
        let status = response.status().as_u16();
        let limited = http_body_util::Limited::new(response.into_body(), MAX_RESPONSE_BYTES);
        let bytes = limited
            .collect()
            .await
            .map_err(http("reading the response"))?
            .to_bytes();
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout {
            socket: name.clone(),
            waited: timeout,
            step: "waiting for the reply",
        })?
}

/// A connection to `socket`, within [`CONNECT_TIMEOUT`].
pub async fn connect(socket: &Path) -> Result<tokio::net::UnixStream, ClientError> {
    let name = socket.display().to_string();
    tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(socket))
        .await
        .map_err(|_| ClientError::Timeout {
            socket: name.clone(),
            waited: CONNECT_TIMEOUT,
            step: "connecting",
        })?
        .map_err(|source| ClientError::Connect {
            socket: name,
            source,
        })
}

/// A current-thread runtime for the blocking entry points.
pub fn runtime(socket: &Path) -> Result<tokio::runtime::Runtime, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Http {
            socket: socket.display().to_string(),
            step: "starting the client",
            source: e.into(),
        })
}

/// [`request`] from outside any async runtime (ctl, tests), with [`RESPONSE_TIMEOUT`].
pub fn try_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Response, ClientError> {
    try_request_within(socket, method, path, body, RESPONSE_TIMEOUT)
}

/// [`request`] from outside any async runtime, waiting at most `timeout` for the reply.
pub fn try_request_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    runtime(socket)?.block_on(request(socket, method, path, body, timeout))
}

/// A CLI's handling of a reply: a 2xx's JSON body (`Null` when it has none), or the
/// daemon's error printed as `slicevisor: error: STATUS MESSAGE (field F)` and `Err(1)`, the
/// exit code.
///
/// # Errors
/// The reply is not a success.
pub fn cli_body(response: &Response) -> Result<Value, i32> {
    let body = response.try_json().unwrap_or(Value::Null);
    if (200..300).contains(&response.status) {
        return Ok(body);
    }
    let field = body["field"]
        .as_str()
        .map(|f| format!(" (field {f})"))
        .unwrap_or_default();
    eprintln!(
        "slicevisor: error: {} {}{field}",
        response.status,
        body["error"].as_str().unwrap_or(&response.body)
    );
    Err(1)
}

/// `body` as one line of JSON for `--json` (`{}` for an empty reply).
pub fn json_line(body: &Value) -> String {
    if body.is_null() {
        "{}".to_string()
    } else {
        body.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_paths_encoded() {
        assert_eq!(
            sliver_path("web-1", "/start").expect("ok"),
            "/slivers/web-1/start"
        );
        for bad in ["victim?x=1", "a\r\nGET /x", "", "UP", "../x", "a/b"] {
            assert!(
                matches!(sliver_path(bad, ""), Err(ClientError::BadName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_socket_that_never_answers_times_out_with_a_clear_message() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("mute.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let start = std::time::Instant::now();
        let e = try_request_within(&path, "GET", "/healthz", None, Duration::from_millis(300))
            .expect_err("no answer");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(
            e.to_string()
                .contains("no answer within 300ms (waiting for the reply)"),
            "{e}"
        );
        let e =
            try_request(&dir.path().join("absent.sock"), "GET", "/", None).expect_err("no socket");
        assert!(e.to_string().contains("absent.sock: connecting"), "{e}");
    }
}
