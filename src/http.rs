//! The HTTP router: composes the scrobbler APIs (`api`) and the web view (`web`), which
//! share `state::AppState` and know nothing of each other, with `GET /health` and the
//! root path that both use (Audioscrobbler handshakes and the home page).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::state::{AppState, ClientAddr};

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/", get(root))
        .merge(crate::api::listenbrainz::router())
        .merge(crate::api::lastfm::router())
        .merge(crate::api::audioscrobbler::router())
        .merge(crate::web::router())
        .with_state(state)
}

/// `/`: an Audioscrobbler 1.2 handshake (`?hs=…`), which old players send to the root
/// of the URL they are given, or the web view's home page.
async fn root(
    state: State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    query: Query<HashMap<String, String>>,
) -> Response {
    if query.contains_key("hs") {
        crate::api::audioscrobbler::handshake(state, addr, headers, query).await
    } else {
        crate::web::home(state, headers).await
    }
}

/// Liveness and identity: answers while the node serves requests.
async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "peer_id": state.peer_id,
    }))
}
