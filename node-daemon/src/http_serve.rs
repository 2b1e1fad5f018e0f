//! Serving HTTP/1.1 with the limits every slicevisor listener has, so that no client can hold
//! the daemon's connections or file descriptors by being slow or idle:
//!
//! | limit | what happens |
//! |---|---|
//! | no complete request head `read_timeout` after the connection opened or the last response (nothing sent, half a head, an idle keep-alive connection) | connection closed (hyper's `header_read_timeout`, which starts whenever hyper waits for a head) |
//! | request body not complete `read_timeout` after its head | `408`, connection closed |
//! | a connection with no request in flight and no byte moved for `read_timeout` after its last answer (a client that stopped reading its response) | asked to close, dropped `read_timeout` later |
//! | `max_connections` open | another client's connection gets a `503` and is closed; the node manager (uid 0 or the daemon's uid) has [`RESERVED_CONNECTIONS`] more |
//! | head over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`] fields | `431` (RFC 6585), connection closed |
//!
//! Body size is the router's own limit (`DefaultBodyLimit` and the JSON parser). Each
//! connection's peer (`SO_PEERCRED`) reaches handlers as `ConnectInfo<Peer>`. A request in
//! flight is never cut off, also not at shutdown: the server then stops accepting, asks each
//! connection to close after its request, and waits up to its drain time for them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{UnixListener, UnixStream};
use tower::ServiceExt;

use crate::api::{ApiError, Peer};

/// Connections beyond `max_connections` kept for the node manager (uid 0 or the daemon's own
/// uid), so that it can always reach the daemon.
pub const RESERVED_CONNECTIONS: usize = 16;
/// File descriptors kept for everything but connections: per sliver a VMM pidfd and the
/// files an operation opens (256 slivers at most, a few each), netlink, logs, the ledger.
pub const OTHER_FDS: u64 = 1280;
/// Most bytes of a request head, request line included.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most header fields in a request head.
pub const MAX_HEADERS: usize = 100;
/// Default `max_connections`, when the open-file limit allows it.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// How long a request head (counted from the connection's start or the last response),
    /// and then its body, may take to arrive.
    pub read_timeout: Duration,
    /// Open connections served for anyone; the node manager gets [`RESERVED_CONNECTIONS`]
    /// more.
    pub max_connections: usize,
}

/// Why limits do not fit this process.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    /// `max_connections` plus the reserve and the daemon's other descriptors exceed the
    /// open-file limit.
    #[error(
        "--max-connections {asked}: the open-file limit (RLIMIT_NOFILE) is {nofile}, which \
         leaves room for at most {most}"
    )]
    TooManyConnections {
        /// What was asked.
        asked: usize,
        /// The soft open-file limit.
        nofile: u64,
        /// The most that fit.
        most: usize,
    },
}

/// Raise the soft open-file limit to the hard one (as servers do), and return it.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `struct rlimit` we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one `struct rlimit` we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Ok(lim.rlim_cur)
}

/// The connection cap for an open-file limit of `nofile`: `asked`, or by default
/// [`DEFAULT_MAX_CONNECTIONS`] lowered to what fits beside [`OTHER_FDS`] and the reserve.
///
/// # Errors
/// `asked` is 0 or does not fit; or, by default, not even one connection fits.
pub fn max_connections(asked: Option<usize>, nofile: u64) -> Result<usize, LimitsError> {
    let reserved = u64::try_from(RESERVED_CONNECTIONS).unwrap_or(u64::MAX);
    let room = nofile.saturating_sub(OTHER_FDS + reserved);
    let most = usize::try_from(room).unwrap_or(usize::MAX);
    let too_many = |asked| LimitsError::TooManyConnections {
        asked,
        nofile,
        most,
    };
    match asked {
        Some(asked) if asked > most || asked == 0 => Err(too_many(asked)),
        Some(asked) => Ok(asked),
        None if most == 0 => Err(too_many(DEFAULT_MAX_CONNECTIONS)),
        None => Ok(DEFAULT_MAX_CONNECTIONS.min(most)),
    }
}

/// What a connection is doing, for its idle timer.
#[derive(Debug)]
struct Activity {
    started: Instant,
    /// Requests being handled.
    in_flight: AtomicUsize,
    /// When a request was last handled or a byte last moved (ms after `started`).
    last_progress_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_progress_ms: AtomicU64::new(0),
        }
    }

    /// Something happened now.
    fn progress(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_progress_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// When the connection counts as idle for `idle`, if nothing happens meanwhile; `None`
    /// while a request is in flight.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Acquire));
        Some(self.started + last + idle)
    }
}

/// The connection's stream, telling its [`Activity`] whenever bytes move.
struct ProgressIo {
    stream: UnixStream,
    activity: Arc<Activity>,
}

impl tokio::io::AsyncRead for ProgressIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.progress();
        }
        polled
    }
}

impl tokio::io::AsyncWrite for ProgressIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progress();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Marks a request in flight on a connection until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.progress();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a connection as open until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A streamed body that fails when no bytes came for `timeout`.
struct ChunkTimeout {
    inner: Body,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl axum::body::HttpBody for ChunkTimeout {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + self.timeout;
                self.sleep.as_mut().reset(next);
                Poll::Ready(frame)
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(format!(
                    "no bytes for {} s",
                    self.timeout.as_secs_f64()
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Middleware: the body must arrive within `read_timeout`, else `408` and the connection
/// closes. A JSON body (anything but `application/octet-stream`) is collected here (the
/// API's bodies are small and capped), one byte past `limit` so that the router's own limit
/// still answers for longer ones. An `application/octet-stream` body (an image upload) is
/// passed on as a stream that fails when no bytes come for `read_timeout`; its handler bounds
/// its total.
async fn read_body_in_time(
    read_timeout: Duration,
    limit: usize,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let streamed = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    if streamed {
        let body = ChunkTimeout {
            inner: body,
            timeout: read_timeout,
            sleep: Box::pin(tokio::time::sleep(read_timeout)),
        };
        return next.run(Request::from_parts(parts, Body::new(body))).await;
    }
    let bytes: Bytes =
        match tokio::time::timeout(read_timeout, axum::body::to_bytes(body, limit + 1)).await {
            Ok(Ok(bytes)) => bytes,
            Ok(Err(e)) => {
                let status = if std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                };
                return ApiError::new(status, format!("request body: {e}")).into_response();
            }
            Err(_) => {
                let error = format!(
                    "request body: not received within {} s",
                    read_timeout.as_secs_f64()
                );
                let mut resp = ApiError::new(StatusCode::REQUEST_TIMEOUT, error).into_response();
                resp.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
                return resp;
            }
        };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Refused connections lingering at once (each holds a descriptor for up to
/// [`REFUSED_LINGER`]); past this they are closed at once.
const MAX_LINGERING: usize = 64;
/// How long a refused connection is kept open for its client to finish sending.
const REFUSED_LINGER: Duration = Duration::from_secs(1);
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// The `503` a connection over the cap gets, written without waiting; then its write side is
/// shut and what the client sends is read and dropped until it closes (at most
/// [`REFUSED_LINGER`]), so that a client still sending its request reads the 503 rather
/// than a broken pipe.
fn refuse(stream: UnixStream) {
    let body = r#"{"error":"too many connections to the daemon; try again later"}"#;
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(reply.as_bytes());
    if LINGERING.fetch_add(1, Ordering::AcqRel) >= MAX_LINGERING {
        LINGERING.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(REFUSED_LINGER, async {
            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        LINGERING.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Serve `app` on `listener` with `limits` until `shutdown` completes; then stop accepting,
/// let each connection finish the request in hand, and return when all are closed or after
/// `drain` (requests still running then are cut off when the runtime stops).
///
/// `body_limit` is the router's body limit (bytes); the body timeout collects at most one
/// byte more.
pub async fn serve(
    listener: UnixListener,
    app: Router,
    limits: ServeLimits,
    body_limit: usize,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let read_timeout = limits.read_timeout;
    let app = app.layer(axum::middleware::from_fn(move |req, next| {
        read_body_in_time(read_timeout, body_limit, req, next)
    }));
    let open = Arc::new(AtomicUsize::new(0));
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut refusal_logged: Option<Instant> = None;
    let mut accept_error_logged: Option<Instant> = None;
    let now_and_then = |last: &mut Option<Instant>| {
        let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if due {
            *last = Some(Instant::now());
        }
        due
    };
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS...: wait for connections to close.
                if now_and_then(&mut accept_error_logged) {
                    log::warn!("accepting a connection: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = Peer {
            uid: stream.peer_cred().ok().map(|c| c.uid()),
        };
        let manager = peer.uid.is_some_and(|uid| uid == 0 || uid == own_uid);
        let cap = limits.max_connections + if manager { RESERVED_CONNECTIONS } else { 0 };
        if open.load(Ordering::Acquire) >= cap {
            if now_and_then(&mut refusal_logged) {
                log::warn!(
                    "{} connections open: refusing more (uid {:?}); see --max-connections",
                    open.load(Ordering::Acquire),
                    peer.uid
                );
            }
            refuse(stream);
            continue;
        }
        open.fetch_add(1, Ordering::AcqRel);
        let guard = Open(open.clone());
        tokio::spawn(serve_connection(
            stream,
            peer,
            app.clone(),
            limits,
            stop_rx.clone(),
            guard,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let deadline = Instant::now() + drain;
    while open.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = open.load(Ordering::Acquire);
    if left > 0 {
        log::warn!("{left} connection(s) still open after {drain:?}: closing them");
    }
}

/// One connection: hyper's HTTP/1.1 with the head timeout, and a timer that asks it to close
/// when no request is in flight and nothing moved for `read_timeout` (hyper's own timer closes
/// an idle connection first; a client that stopped reading its response keeps one open), or
/// when the daemon stops. Asked to close, it is dropped once it has had `read_timeout` more
/// without a request in flight or a byte moved.
async fn serve_connection(
    stream: UnixStream,
    peer: Peer,
    app: Router,
    limits: ServeLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
    _open: Open,
) {
    let activity = Arc::new(Activity::new());
    let for_service = activity.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let busy = Busy::begin(&for_service);
        let reply = app.clone().oneshot(req);
        async move {
            let reply = reply.await;
            drop(busy);
            reply
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.read_timeout)
        .max_header_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS);
    let io = ProgressIo {
        stream,
        activity: activity.clone(),
    };
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let idle_at = activity.idle_deadline(limits.read_timeout);
        // While a request is in flight, look again after a while.
        let wake = idle_at.unwrap_or_else(|| Instant::now() + limits.read_timeout);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    log::debug!("connection from uid {:?}: {e}", peer.uid);
                }
                return;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if idle_at.is_none_or(|d| d > Instant::now()) {
                    continue;
                }
                if closing {
                    log::debug!("connection from uid {:?}: did not close; dropped", peer.uid);
                    return;
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
                activity.progress();
            }
            changed = stop.changed(), if !closing => {
                if changed.is_err() || *stop.borrow() {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    activity.progress();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        assert_eq!(max_connections(None, 20_000).ok(), Some(1024));
        // 2048 descriptors: 1280 for the rest, 16 reserved, 752 for anyone.
        assert_eq!(max_connections(None, 2048).ok(), Some(752));
        assert_eq!(max_connections(Some(100), 2048).ok(), Some(100));
        let err = max_connections(Some(800), 2048).expect_err("too many");
        assert!(
            err.to_string().starts_with("--max-connections 800: "),
            "{err}"
        );
        assert!(err.to_string().contains("at most 752"), "{err}");
        assert!(max_connections(Some(0), 2048).is_err());
        assert!(max_connections(None, 1024).is_err(), "no room at all");
    }

    #[test]
    fn a_connection_is_idle_only_without_a_request_in_flight() {
        let a = Arc::new(Activity::new());
        let idle = Duration::from_secs(5);
        let first = a.idle_deadline(idle).expect("idle from the start");
        assert!(first <= Instant::now() + idle);
        let busy = Busy::begin(&a);
        assert_eq!(a.idle_deadline(idle), None);
        std::thread::sleep(Duration::from_millis(20));
        drop(busy);
        let after = a.idle_deadline(idle).expect("idle again");
        assert!(after > first, "the clock restarts when the request ends");
        std::thread::sleep(Duration::from_millis(20));
        a.progress();
        assert!(
            a.idle_deadline(idle).expect("idle") > after,
            "and when bytes move"
        );
    }
}
