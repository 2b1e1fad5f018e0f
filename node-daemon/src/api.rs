//! The HTTP/1.1 + JSON API on the node's unix socket (axum). Routes are listed once in
//! [`ROUTES`]; `docs/openapi.json` documents them and a test keeps the two in step. Handlers
//! only parse the request, call the [`Node`] and map its [`SliverError`]s to statuses.

use std::sync::Arc;

use audit_store::params::QueryRequest;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use crate::error::SliverError;
use crate::node::{Node, SliverView};
use crate::registry::{Created, SliverPatch};
use crate::spec::{parse, SliverSpec, MAX_BODY_BYTES};

/// Every (method, path) the daemon serves.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/audit"),
    ("GET", "/slivers"),
    ("GET", "/slivers/{name}"),
    ("PUT", "/slivers/{name}"),
    ("PATCH", "/slivers/{name}"),
    ("DELETE", "/slivers/{name}"),
    ("POST", "/slivers/{name}/start"),
    ("POST", "/slivers/{name}/stop"),
    ("GET", "/slivers/{name}/console"),
    ("POST", "/slivers/{name}/console/attach"),
    ("GET", "/images"),
    ("GET", "/images/{name}"),
    ("PUT", "/images/{name}"),
    ("DELETE", "/images/{name}"),
];

/// Who is on the other end of a connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's uid, if the kernel told us.
    pub uid: Option<u32>,
}

/// An error as a client gets it: an HTTP status and `{"error": "...", "field": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// HTTP status code.
    #[serde(skip)]
    pub status: StatusCode,
    /// What was wrong, for a person.
    pub error: String,
    /// The offending field (dotted path), when one field is to blame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    /// An error of `status` with message `error`, no field.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            field: None,
        }
    }
}

/// The status code of each kind of failure (RFC 9110 section 15; 507 from RFC 4918).
fn status_of(e: &SliverError) -> StatusCode {
    match e {
        SliverError::Storage(crate::state::StateError::NoSpace { .. }) => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        SliverError::Storage(crate::state::StateError::TooLong { .. }) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        SliverError::Invalid { .. } => StatusCode::BAD_REQUEST,
        SliverError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        SliverError::NotFound(_) | SliverError::ImageNotFound(_) => StatusCode::NOT_FOUND,
        SliverError::Conflict { .. } => StatusCode::CONFLICT,
        SliverError::Exhausted(_) => StatusCode::INSUFFICIENT_STORAGE,
        SliverError::Audit(a) if a.field().is_some() => StatusCode::BAD_REQUEST,
        SliverError::Storage(_)
        | SliverError::HostNet(_)
        | SliverError::Vmm { .. }
        | SliverError::Audit(_)
        | SliverError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<SliverError> for ApiError {
    fn from(e: SliverError) -> Self {
        Self {
            status: status_of(&e),
            field: e.field().map(str::to_string),
            error: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self)).into_response()
    }
}

pub(crate) type Reply<T> = Result<T, ApiError>;

/// Run a mutating operation to its end in a task of its own: a client that goes away does
/// not cancel it halfway (a stop cut off after SIGUSR1 would never send SIGTERM).
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, SliverError>> + Send + 'static,
) -> Result<T, SliverError> {
    tokio::spawn(op)
        .await
        .map_err(|e| SliverError::Internal(format!("operation task: {e}")))?
}

/// A route's `{name}`; a path that does not decode is a JSON 400 naming `name`.
pub(crate) struct Name(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(Name(name)),
            Err(e) => Err(SliverError::invalid("name", e.body_text()).into()),
        }
    }
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Reply<Bytes> {
    body.map_err(|e| ApiError::new(e.status(), format!("request body: {e}")))
}

/// Liveness, and which protections are on (never silently off).
async fn healthz(State(node): State<Arc<Node>>) -> Json<serde_json::Value> {
    let cgroups = match node.supervisor.cgroups().map(|c| &c.layout) {
        Some(crate::sliver_cgroups::Layout::V2(_)) => "v2".to_string(),
        Some(crate::sliver_cgroups::Layout::V1 { .. }) => "v1".to_string(),
        None => "off: see the daemon's log".to_string(),
    };
    let jail = match node.supervisor.jail() {
        Some(ids) => format!("on: ids {ids}"),
        None => "off: --no-jail".to_string(),
    };
    Json(json!({"status": "ok", "protections": {
        "cgroups": cgroups,
        "jail": jail,
        "seccomp": "kill",
    }}))
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let text = crate::metrics::render(&node);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /audit?at=...&dst=...`: which slice and sliver, with the flows.
async fn audit(
    State(node): State<Arc<Node>>,
    RawQuery(query): RawQuery,
) -> Reply<Json<serde_json::Value>> {
    let request: QueryRequest = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| SliverError::invalid("query", format!("query string: {e}")))?;
    let params = request.parse("").map_err(SliverError::Audit)?;
    let answer = node.audit(params).await?;
    serde_json::to_value(answer).map(Json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("audit answer: {e}"),
        )
    })
}

async fn list(State(node): State<Arc<Node>>) -> Json<Vec<SliverView>> {
    Json(node.list())
}

async fn show(State(node): State<Arc<Node>>, Name(name): Name) -> Reply<Json<SliverView>> {
    Ok(Json(node.show(&name)?))
}

async fn create(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Name(name): Name,
    body: Result<Bytes, BytesRejection>,
) -> Reply<(StatusCode, Json<SliverView>)> {
    let spec: SliverSpec = parse(&body_bytes(body)?)?;
    let owned = name.clone();
    let (created, view) = detached(async move { node.create(&owned, spec).await }).await?;
    let status = match created {
        Created::New => {
            log::info!("uid {:?} created sliver {name}", peer.uid);
            StatusCode::CREATED
        }
        Created::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(view)))
}

async fn patch(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Name(name): Name,
    body: Result<Bytes, BytesRejection>,
) -> Reply<Json<SliverView>> {
    let patch: SliverPatch = parse(&body_bytes(body)?)?;
    let described = format!("{patch:?}");
    let owned = name.clone();
    let view = detached(async move { node.patch(&owned, patch).await }).await?;
    log::info!(
        "uid {:?} changed the limits of sliver {name}: {described}",
        peer.uid
    );
    Ok(Json(view))
}

async fn remove(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Name(name): Name,
) -> Reply<StatusCode> {
    let owned = name.clone();
    detached(async move { node.delete(&owned).await }).await?;
    log::info!("uid {:?} deleted sliver {name}", peer.uid);
    Ok(StatusCode::NO_CONTENT)
}

async fn start(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Name(name): Name,
) -> Reply<Json<SliverView>> {
    let owned = name.clone();
    let view = detached(async move { node.start(&owned).await }).await?;
    log::info!("uid {:?} started sliver {name}", peer.uid);
    Ok(Json(view))
}

async fn stop(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Name(name): Name,
) -> Reply<Json<SliverView>> {
    log::info!("uid {:?} stops sliver {name}", peer.uid);
    let owned = name.clone();
    Ok(Json(
        detached(async move { node.stop(&owned).await }).await?,
    ))
}

async fn fallback() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route (see docs/openapi.json)",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route (see docs/openapi.json)",
    )
}

/// The router over the node.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/audit", get(audit))
        .route("/slivers", get(list))
        .route(
            "/slivers/{name}",
            get(show).put(create).patch(patch).delete(remove),
        )
        .route("/slivers/{name}/start", post(start))
        .route("/slivers/{name}/stop", post(stop))
        .merge(crate::images_api::routes())
        .merge(crate::console_api::routes())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        // Our own parser reports oversize bodies as JSON; let one byte more through to it.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES + 1))
        .with_state(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_document_lists_exactly_the_served_routes() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../../docs/openapi.json"))
            .expect("docs/openapi.json parses");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for key in item.as_object().expect("path item").keys() {
                if ["get", "put", "post", "patch", "delete"].contains(&key.as_str()) {
                    documented.push((key.to_uppercase(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn errors_serialise_as_error_and_field_with_their_status() {
        let e = ApiError::from(SliverError::invalid("net.ipv4", "bad"));
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(
            serde_json::to_value(&e).expect("json"),
            json!({"error": "bad", "field": "net.ipv4"})
        );
        let e = ApiError::from(SliverError::NotFound("web-1".into()));
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(
            serde_json::to_value(&e).expect("json"),
            json!({"error": "no sliver named \"web-1\""})
        );
        let cases = [
            (
                SliverError::TooLarge { len: 9, max: 8 },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                SliverError::conflict(Some("name"), "exists"),
                StatusCode::CONFLICT,
            ),
            (
                SliverError::Exhausted("no slot".into()),
                StatusCode::INSUFFICIENT_STORAGE,
            ),
            (
                SliverError::Internal("bug".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::from(e).status, status);
        }
    }
}
