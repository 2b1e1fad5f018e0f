//! The HTTP/1.1 + JSON API on the node's unix socket (axum). Routes are listed once in
//! [`ROUTES`]; `docs/openapi.json` documents them and a test keeps the two in step.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::error::ApiError;
use super::registry::{Created, LimitsPatch};
use super::spec::{parse, SliverSpec, MAX_BODY_BYTES};
use super::state::SliverRecord;
use super::supervisor::Supervisor;
use crate::shares::slots::Shaping;
use audit_store::params::QueryRequest;
use audit_store::AuditError;
use vmm::stats::SliverCounters;

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
];

/// Who is on the other end of a connection (SO_PEERCRED).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's uid, if the kernel told us.
    pub uid: Option<u32>,
}

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        Peer {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self)).into_response()
    }
}

fn view(sup: &Supervisor, name: &str, r: &SliverRecord) -> serde_json::Value {
    json!({
        "name": name,
        "slice": r.spec.slice,
        "state": r.state,
        "pid": r.pid,
        "started_at": r.started_at,
        "exit_reason": r.exit_reason,
        "counters": sup.counters(name),
        "shaping": sup.shaping(name),
        "spec": r.spec,
    })
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::status(e.status().as_u16(), format!("request body: {e}")))
}

/// Run registry work (which fsyncs) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::status(500, format!("internal error: {e}")))?
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Per-sliver counter series: name, help, and which counter.
type Series = (&'static str, &'static str, fn(&SliverCounters) -> u64);

const SERIES: [Series; 5] = [
    (
        "slicevisor_sliver_tx_bytes_total",
        "Bytes the sliver's guest sent.",
        |c| c.tx_bytes,
    ),
    (
        "slicevisor_sliver_tx_packets_total",
        "Frames the sliver's guest sent.",
        |c| c.tx_packets,
    ),
    (
        "slicevisor_sliver_rx_bytes_total",
        "Bytes delivered to the sliver's guest.",
        |c| c.rx_bytes,
    ),
    (
        "slicevisor_sliver_rx_packets_total",
        "Frames delivered to the sliver's guest.",
        |c| c.rx_packets,
    ),
    (
        "slicevisor_sliver_drops_total",
        "Frames dropped in either direction.",
        |c| c.drops,
    ),
];

async fn metrics(State(sup): State<Arc<Supervisor>>) -> Response {
    let reg = sup.registry();
    let mut out = String::from(
        "# HELP slicevisor_slivers Slivers defined on this node, by state.\n# TYPE slicevisor_slivers gauge\n",
    );
    for (state, count) in reg.count_by_state() {
        out.push_str(&format!(
            "slicevisor_slivers{{state=\"{}\"}} {count}\n",
            state.as_str()
        ));
    }
    let counters: Vec<_> = reg
        .list()
        .into_iter()
        .map(|(name, r)| {
            let c = sup.counters(&name);
            (name, r.spec.slice, c)
        })
        .collect();
    for (metric, help, get) in SERIES {
        out.push_str(&format!(
            "# HELP {metric} {help}\n# TYPE {metric} counter\n"
        ));
        for (name, slice, c) in &counters {
            out.push_str(&format!(
                "{metric}{{sliver=\"{name}\",slice=\"{slice}\"}} {}\n",
                get(c)
            ));
        }
    }
    shaping_metrics(&sup, &counters, &mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

type ShapingGauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Shaping) -> Option<f64>,
);

/// Per-sliver shaping series: allocated rates, bytes today, time throttled.
const SHAPING_SERIES: [ShapingGauge; 5] = [
    (
        "slicevisor_sliver_tx_allocated_bps",
        "gauge",
        "Rate allocated to the sliver's egress now, bit/s (absent: unlimited).",
        |s| s.tx_allocated_bps.map(|v| v as f64),
    ),
    (
        "slicevisor_sliver_rx_allocated_bps",
        "gauge",
        "Rate allocated to the sliver's ingress now, bit/s (absent: unlimited).",
        |s| s.rx_allocated_bps.map(|v| v as f64),
    ),
    (
        "slicevisor_sliver_tx_bytes_today",
        "gauge",
        "Bytes the sliver sent since midnight UTC (the daily budget's count).",
        |s| Some(s.tx_bytes_today as f64),
    ),
    (
        "slicevisor_sliver_tx_throttled_seconds_total",
        "counter",
        "Time the sliver's frames waited for egress tokens.",
        |s| Some(s.tx_throttled_ms as f64 / 1e3),
    ),
    (
        "slicevisor_sliver_rx_throttled_seconds_total",
        "counter",
        "Time frames for the sliver waited for ingress tokens.",
        |s| Some(s.rx_throttled_ms as f64 / 1e3),
    ),
];

fn shaping_metrics<C>(sup: &Supervisor, slivers: &[(String, String, C)], out: &mut String) {
    let shaping: Vec<_> = slivers
        .iter()
        .filter_map(|(name, slice, _)| sup.shaping(name).map(|s| (name, slice, s)))
        .collect();
    for (metric, kind, help, get) in SHAPING_SERIES {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
        for (name, slice, s) in &shaping {
            if let Some(v) = get(s) {
                out.push_str(&format!(
                    "{metric}{{sliver=\"{name}\",slice=\"{slice}\"}} {v}\n"
                ));
            }
        }
    }
}

fn audit_error(e: AuditError) -> ApiError {
    match e.field() {
        Some(field) => ApiError::invalid(field, e.to_string()),
        None => ApiError::status(500, format!("audit log: {e}")),
    }
}

/// `GET /audit?at=...&dst=...`: which slice and sliver, with the flows.
async fn audit(
    State(sup): State<Arc<Supervisor>>,
    RawQuery(query): RawQuery,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: QueryRequest = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid("query", format!("query string: {e}")))?;
    let params = request.parse("").map_err(audit_error)?;
    let state_dir = sup.state_dir().to_owned();
    let answer =
        blocking(move || audit_store::query::run(&state_dir, &params).map_err(audit_error)).await?;
    serde_json::to_value(answer)
        .map(Json)
        .map_err(|e| ApiError::status(500, format!("audit answer: {e}")))
}

async fn list(State(sup): State<Arc<Supervisor>>) -> Json<serde_json::Value> {
    let reg = sup.registry();
    let all: Vec<_> = reg.list().iter().map(|(n, r)| view(&sup, n, r)).collect();
    Json(json!(all))
}

async fn show(
    State(sup): State<Arc<Supervisor>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = sup.registry().get(&name)?;
    Ok(Json(view(&sup, &name, &record)))
}

async fn create(
    State(sup): State<Arc<Supervisor>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(body)?;
    let reg = sup.registry().clone();
    let (created, record) = blocking(move || {
        let mut spec: SliverSpec = parse(&body)?;
        spec.validate(&name)?;
        let (created, record) = reg.create(&name, spec)?;
        Ok((created, (name, record)))
    })
    .await?;
    if created == Created::New {
        if let Err(e) = sup.setup_host_net(&record.0, &record.1.spec).await {
            // Nothing half-made: the definition goes again.
            let reg = sup.registry().clone();
            let name = record.0.clone();
            blocking(move || reg.delete(&name)).await?;
            sup.teardown_host_net(&record.0).await;
            return Err(e);
        }
        log::info!("uid {:?} created sliver {}", peer.uid, record.0);
    }
    let status = match created {
        Created::New => StatusCode::CREATED,
        Created::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(view(&sup, &record.0, &record.1))).into_response())
}

async fn patch(
    State(sup): State<Arc<Supervisor>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = body_bytes(body)?;
    let reg = sup.registry().clone();
    let sup2 = sup.clone();
    let (name, record) = blocking(move || {
        let patch: LimitsPatch = parse(&body)?;
        let record = reg.patch_limits(&name, &patch)?;
        if let Some(net) = &record.spec.net {
            sup2.apply_limits(&name, net)?;
        }
        log::info!(
            "uid {:?} changed the limits of sliver {name}: {patch:?}",
            peer.uid
        );
        Ok((name, record))
    })
    .await?;
    Ok(Json(view(&sup, &name, &record)))
}

async fn remove(
    State(sup): State<Arc<Supervisor>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let had_net = sup.registry().get(&name)?.spec.net.is_some();
    sup.stop(&name).await?;
    let reg = sup.registry().clone();
    let deleted = name.clone();
    blocking(move || reg.delete(&deleted)).await?;
    if had_net {
        sup.teardown_host_net(&name).await;
    }
    log::info!("uid {:?} deleted sliver {name}", peer.uid);
    Ok(StatusCode::NO_CONTENT)
}

async fn start(
    State(sup): State<Arc<Supervisor>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let record = sup.start(&name).await?;
    log::info!("uid {:?} started sliver {name}", peer.uid);
    Ok(Json(view(&sup, &name, &record)))
}

async fn stop(
    State(sup): State<Arc<Supervisor>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    log::info!("uid {:?} stops sliver {name}", peer.uid);
    let record = sup.stop(&name).await?;
    Ok(Json(view(&sup, &name, &record)))
}

async fn fallback() -> ApiError {
    ApiError::status(404, "no such route (see docs/openapi.json)")
}

async fn method_not_allowed() -> ApiError {
    ApiError::status(
        405,
        "method not allowed on this route (see docs/openapi.json)",
    )
}

/// The router over the supervisor (and its registry).
pub fn router(supervisor: Arc<Supervisor>) -> Router {
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
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        // Our own parser reports oversize bodies as JSON; let one byte more through to it.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES + 1))
        .with_state(supervisor)
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
}
