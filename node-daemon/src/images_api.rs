//! The image store's routes: `GET /images`, `GET /images/{name}`, `PUT /images/{name}` (the
//! image's bytes, `application/octet-stream`, streamed to disk) and `DELETE /images/{name}`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt;

use crate::api::{ApiError, Name, Peer, Reply};
use crate::images::ImageInfo;
use crate::node::{blocking, Node};

async fn list(State(node): State<Arc<Node>>) -> Json<Vec<ImageInfo>> {
    Json(node.images().list())
}

async fn show(State(node): State<Arc<Node>>, Name(name): Name) -> Reply<Json<ImageInfo>> {
    Ok(Json(node.images().get(&name)?))
}

async fn import(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Name(name): Name,
    headers: HeaderMap,
    body: Body,
) -> Reply<(StatusCode, Json<ImageInfo>)> {
    let octets = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/octet-stream"));
    if !octets {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "an image is uploaded as application/octet-stream",
        ));
    }
    let mut import = node.images().begin_import(&name)?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, format!("request body: {e}"))
        })?;
        import.write(&chunk)?;
    }
    let store = node.clone();
    let info = blocking(move || store.images().finish_import(import)).await?;
    log::info!(
        "uid {:?} imported image {name} ({} bytes)",
        peer.uid,
        info.size
    );
    Ok((StatusCode::CREATED, Json(info)))
}

async fn remove(
    State(node): State<Arc<Node>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Name(name): Name,
) -> Reply<StatusCode> {
    let users = node.image_users(&name);
    node.images().delete(&name, &users)?;
    log::info!("uid {:?} deleted image {name}", peer.uid);
    Ok(StatusCode::NO_CONTENT)
}

/// The image routes, to merge into the API's router.
pub fn routes() -> Router<Arc<Node>> {
    Router::new()
        .route("/images", get(list))
        .route("/images/{name}", get(show).put(import).delete(remove))
}
